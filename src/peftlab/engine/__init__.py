"""The training job and what runs it: Lightning's module, trainer and callbacks around a peft model.

``train``        ``train_from_config``: the checks before a run, the job, the merge after it
``job``          ``TrainingJob``: the run as named steps (set up, zero-shot, fit, test, save, record)
``module``       the LightningModule: loss, optimizer, scheduler, evaluation through the task
``trainer``      the Lightning Trainer a config describes
``callbacks``    the meter, divergence stop, exact-resume state
``checkpoints``  checkpoints as safetensors plus JSON: data, never pickles
``precision``    the precision a trainer runs in
``distributed``  ranks, world size, gathering across processes
``forgetting``   the loss on general text before and after training
``evaluate``     ``peftlab-eval``: a run's adapter, or a base model, on a task split
``generate``     ``peftlab-generate``: text from a run's adapter
``params``       ``peftlab-params``: trainable and total parameters without training
"""
