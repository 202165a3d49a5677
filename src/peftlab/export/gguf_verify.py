"""A GGUF export verified where it is read: the file written from the verified merged model, read
back with transformers' GGUF loader (model and tokenizer, as peftlab's default model is read), its
config checked against the model's, its tokenizer against the run's on the test split, its logits
and every greedy answer on the test split against the adapter model's; and, where
``llama-cpp-python`` is installed (``pip install llama-cpp-python``: it builds llama.cpp from
source), llama.cpp's own greedy answers from the same prompt tokens compared the same way.

f32 and f16 files must give the adapter model's answers (else the merge fails and nothing is left);
bf16 and q8_0 round more: their exact-match difference is reported, not gated.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from peftlab.export.gguf import check_read_back, file_name, write_gguf
from peftlab.export.verify import Evaluation, compare, iter_logits, same_predictions, score_split

EXACT_TYPES = ("f32", "f16")  # the answers must not change
LLAMA_CPP_MISSING = "not installed (pip install llama-cpp-python to compare llama.cpp's answers)"
# a byte-level tokenizer without merges (the tiny test models'): transformers reads it, llama.cpp's gpt2 vocabulary not
NO_MERGES = "not compared: the tokenizer has no BPE merges, which llama.cpp's gpt2 vocabulary needs"
CANNOT_LOAD = "cannot load the file"


def file_mb(path: Path) -> float:
    return round(Path(path).stat().st_size / 2**20, 2)


def export_gguf(model, tokenizer, folder: Path, job: Any) -> tuple[dict[str, Any], list[str]]:
    """Write ``model`` (the reloaded, verified merged model) into ``folder`` as one GGUF file of
    ``job.options.gguf_type``, read it back and check it; (the report's ``gguf`` entry, what fails)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peftlab.data.datamodule import TaskDataModule
    from peftlab.models import ensure_pad_token

    r, ref, gguf_type = job.r, job.ref, job.options.gguf_type
    name = file_name(job.conf, gguf_type)
    write_gguf(model, tokenizer, folder / name, gguf_type, f"{job.conf.model.name} + {job.conf.method.name}")
    check_read_back(model.config, AutoConfig.from_pretrained(folder, gguf_file=name))
    read_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ensure_pad_token(read_tokenizer)
    read = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    _not_quantized(read)
    data = TaskDataModule(r.task, read_tokenizer, seed=job.conf.seed)
    checks = compare(ref.logits, iter_logits(read, r.task, job.batches), tie=job.tol.top1_tie)
    checks["prompts_identical"], checks["prompts"] = same_prompts(r.data.test_dataloader(), data.test_dataloader())
    test = score_split(read, r.task, read_tokenizer, data.test_dataloader())
    checks.update(same_predictions(test, ref.test))
    metric = job.compared[0]
    entry = {"file": name, "type": gguf_type, "size_mb": file_mb(folder / name), "checks": checks,
             "metrics": {k: test.metrics[k] for k in job.compared if k in test.metrics},
             "exact": gguf_type in EXACT_TYPES,
             f"{metric}_difference": round(test.metrics[metric] - ref.test.metrics[metric], 6),
             "llama_cpp": llama_cpp_check(folder / name, read, read_tokenizer, data, r.task, ref.test)}
    return entry, problems(entry, r.task.probe_name)


def _not_quantized(model) -> None:
    """The loader marks a GGUF model quantized; its weights are dequantized floats here (convert_gguf does the same)."""
    model.hf_quantizer = None
    model.is_quantized = False


def same_prompts(ours, theirs) -> tuple[int, int]:
    """How many test examples the GGUF's tokenizer encodes to the run's tokens, of how many."""
    same = total = 0
    for a, b in zip(ours, theirs, strict=True):
        for x, y, mx, my in zip(a["input_ids"], b["input_ids"], a["attention_mask"], b["attention_mask"], strict=True):
            same += int(torch.equal(x[mx.bool()], y[my.bool()]))
            total += 1
    return same, total


def problems(entry: dict[str, Any], probe_name: str) -> list[str]:
    c, found = entry["checks"], []
    if c["prompts_identical"] != c["prompts"]:
        found.append(f"gguf: its tokenizer encodes {c['prompts'] - c['prompts_identical']} of {c['prompts']} test "
                     "prompts differently")
    if entry["exact"] and c["probes_identical"] != c["probes"]:
        found.append(f"gguf ({entry['type']}): {c['probes'] - c['probes_identical']} of {c['probes']} test "
                     f"{probe_name} differ")
    lc = entry["llama_cpp"]
    if isinstance(lc, str) and lc.startswith(CANNOT_LOAD):
        found.append(f"llama.cpp: {lc}")
    if entry["exact"] and isinstance(lc, dict) and lc["probes_identical"] != lc["probes"]:
        found.append(f"llama.cpp ({entry['type']}): {lc['probes'] - lc['probes_identical']} of {lc['probes']} test "
                     f"{probe_name} differ")
    return found


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Load with llama.cpp's plain CPU kernels (``use_extra_bufts=False``): its weight-repacking
    buffers, AMX's among them, crash the process on q8_0 matrices on CPUs with AMX (llama-cpp-python
    0.3.36; ggml-org/llama.cpp#20824). A check wants the reference path anyway, not the fastest.
    tests/test_gguf.py tells when the default path stops crashing and this can go."""
    import llama_cpp.llama as module

    default = module.llama_cpp.llama_model_default_params

    def plain() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    module.llama_cpp.llama_model_default_params = plain
    try:
        yield
    finally:
        module.llama_cpp.llama_model_default_params = default


def llama_cpp_check(path: Path, model, tokenizer, data, task, reference: Evaluation) -> Any:
    """llama.cpp's greedy answers to the test split's prompts (the same tokens), compared with the
    adapter model's; ``LLAMA_CPP_MISSING`` where llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return LLAMA_CPP_MISSING
    import gguf
    import llama_cpp

    from peftlab.data.loaders import InSplitOrder
    from peftlab.tasks.generation import end_tokens

    if "tokenizer.ggml.merges" not in gguf.GGUFReader(path).fields:
        return NO_MERGES
    ends, limit = set(end_tokens(model, tokenizer)), task.data.max_new_tokens
    version = getattr(llama_cpp, "__version__", "unknown")
    try:
        with reference_kernels():
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_threads=max(torch.get_num_threads(), 1),
                                  seed=0, verbose=False)
    except ValueError as err:  # llama.cpp refused the file (its reason is in its own log)
        return f"{CANNOT_LOAD} (llama-cpp-python {version}: {str(err).splitlines()[0]})"
    answers, references = [], []
    for batch in data.test_dataloader():
        for position, ids, mask, gold in zip(batch["position"], batch["gen_input_ids"], batch["gen_attention_mask"],
                                             batch["references"], strict=True):
            out: list[int] = []
            for token in llm.generate(ids[mask.bool()].tolist(), temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                      repeat_penalty=1.0, reset=True):
                if token in ends or len(out) >= limit:
                    break
                out.append(token)
            answers.append((int(position), tokenizer.decode(out, skip_special_tokens=True).strip()))
            references.append((int(position), gold))
    predictions = InSplitOrder.restore(answers)
    golds = InSplitOrder.restore(references)
    exact = sum(p.strip() == g.strip() for p, g in zip(predictions, golds, strict=True)) / max(len(golds), 1)
    return {"version": version, "exact_match": round(exact, 6),
            **same_predictions(Evaluation({}, predictions), reference)}


def summary_lines(report: dict[str, Any], metric: str) -> list[str]:
    g = report["gguf"]
    c, lc = g["checks"], g["llama_cpp"]
    m = report["metrics"]
    gate = "required identical" if g["exact"] else "reported, not gated"
    return [
        f"  GGUF ({g['type']}) read back by transformers: {g['size_mb']} MiB (safetensors "
        f"{report['sizes_mb']['merged']} MiB); test {metric} {g['metrics'].get(metric, float('nan')):.4f} "
        f"(adapter {m['adapter'][metric]:.4f}, "
        f"safetensors {m['merged'][metric]:.4f}, difference {g[f'{metric}_difference']:+.4f})",
        f"  GGUF vs adapter: max logit error {c['max_abs_error']:.3g}, top-1 agreement {c['top1_agreement']:.4f}, "
        f"test {report['probe_name']} identical {c['probes_identical']}/{c['probes']} ({gate}); tokenizer: "
        f"{c['prompts_identical']}/{c['prompts']} test prompts encoded identically",
        "  llama.cpp: " + (lc if isinstance(lc, str) else
                           f"{lc['version']}, test {report['probe_name']} identical {lc['probes_identical']}/"
                           f"{lc['probes']}, exact match {lc['exact_match']:.4f}"),
    ]


def gguf_section(gguf: Optional[dict[str, Any]]) -> list[str]:
    """The model card's section on a GGUF export (export/card.py's merged_card)."""
    if not gguf:
        return []
    c, lc = gguf["checks"], gguf["llama_cpp"]
    return [f"## GGUF\n\n`{gguf['file']}` ({gguf['type']}, {gguf['size_mb']} MiB), read back by transformers' GGUF "
            f"loader against the adapter: top-1 agreement {c['top1_agreement']:.4f}, test greedy answers identical "
            f"{c['probes_identical']}/{c['probes']}; llama.cpp: "
            + (lc if isinstance(lc, str) else f"answers identical {lc['probes_identical']}/{lc['probes']}") + "."]
