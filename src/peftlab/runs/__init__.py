"""Run folders: what peftlab writes and reads back, and who may write where.

``files``    atomic writes (temporary name, then rename) and what an interrupted write left
``locks``    one command per folder (an operating-system lock a killed process releases)
``folders``  the states of a run folder: fresh, finished, diverged; clean-up after a failed start
``metrics``  the one writer of ``metrics.json``, reading it back, the versions a run records
``memory``   the peak resident memory a run records
``config``   reading a finished run's config back, as data
``resume``   ``resume=<folder>``: the command line that continues a killed run, read as data
``rerun``    ``rerun.yaml``: writing it, and reading one as data before Hydra does
``sweeps``   a sweep's index of jobs and its failure records
"""
