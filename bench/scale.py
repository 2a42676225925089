"""Scale: memz's training on bases of real shapes, in every precision the device has.

Random-init Llama models built in code at the shapes of SmolLM2-135M,
SmolLM2-360M, SmolLM2-1.7B and a 7B Llama layout (weights random, the bundled
tokenizer; nothing is downloaded), saved as safetensors and loaded the way
memzd loads a base (memzd.model.load_base, with base_dtype). For each shape and
precision it prints:

  load memory       the loaded base's footprint (its parameters and buffers)
  train peak        peak memory while memz trains a batch of 10 facts (20 examples)
  tokens/s          memz's trainer, against the plain peft loop (one example per step,
                    full logits) on the same model in the same run
  share of peak     useful FLOP/s over this device's measured matmul peak in that dtype

A shape that does not fit the device's memory in a precision is skipped with
the reason. Drop to live through a real memzd: `bench/live.py --base-model DIR`
on one of the folders this script keeps with `--keep`.

    python bench/scale.py                       # every shape that fits, fp32 and bf16 on this CPU
    python bench/scale.py --shapes 135m 360m    # some of them
    python bench/scale.py --quick --tokenizer tests/tiny-model-dir   # harness check, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from speed import machine, matmul_peak, plain_loop, train_flops, training_examples  # noqa: E402

from memzd import lora  # noqa: E402
from memzd.config import Config  # noqa: E402
from memzd.model import DTYPES, load_base  # noqa: E402
from memzd.trainer import fast_bf16, train  # noqa: E402

SHAPES = {  # the published configs' shapes
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, tie_word_embeddings=True),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, tie_word_embeddings=True),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """The highest resident memory (MiB) seen while inside, sampled every 5 ms."""

    def __enter__(self):
        self.peak, self._stop = rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def available_mib(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**20
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 1024
    return float("inf")


def build(shape: str, tokenizer_dir: Path, dtype: str, out: Path, device: torch.device) -> Path:
    """A random-init Llama at `shape`, saved in `dtype` with the tokenizer beside it.
    The weights are drawn on `device` (a GPU draws a 7B's in a second; a CPU takes minutes)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, rms_norm_eps=1e-5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def measure(shape: str, dtype: str, folder: Path, backend: str, steps: int) -> dict:
    t0 = time.perf_counter()
    base = load_base(str(folder), backend, dtype)
    loaded_s = time.perf_counter() - t0
    device = base.device
    # The model's own footprint: on the CPU the weights may stay mapped from the file
    # until touched, and on CUDA the allocator's count carries what the build left cached.
    load_mib = base.info["memory_bytes"] / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    encoded = training_examples(base.tokenizer, 20, 20, 100)
    run = cfg.training
    run.max_steps, run.stop_loss, run.replay, run.eval_every = steps, 0.0, 0, 0
    run.precision = "bf16" if dtype != "fp32" or fast_bf16(device) else "fp32"
    if device.type == "cuda":  # kernels and cuBLAS are set up on first use: not part of either figure
        warm = replace(run, max_steps=2)
        lora.start_training(model, cfg.lora, None)
        train(model, encoded, warm, pad_id=base.tokenizer.pad_token_id, device=device)
        torch.cuda.synchronize(device)
    torch.manual_seed(0)
    lora.start_training(model, cfg.lora, None)
    with PeakRss() as rss:  # the process's own maxrss would carry an earlier, larger run's peak
        result = train(model, encoded, run, pad_id=base.tokenizer.pad_token_id, device=device)
    memz_tps = result.tokens / result.seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss.peak
    flops = train_flops(model, encoded) * (result.tokens / sum(len(e.input_ids) for e in encoded)) / result.seconds
    torch.manual_seed(0)
    lora.start_training(model, cfg.lora, None)
    one_epoch = encoded[: max(2, min(len(encoded), steps))]
    plain_tps, _ = plain_loop(model, one_epoch, 1, base.tokenizer.pad_token_id, cfg.training.lr)
    # The share is of the peak in the precision the matmuls run in: bf16 under autocast.
    math_dtype = DTYPES[dtype if dtype != "fp32" else ("bf16" if run.precision == "bf16" else "fp32")]
    # a GPU needs a larger square than a CPU to reach its peak
    peak_flops = matmul_peak(8192 if device.type == "cuda" else 1024, math_dtype, 1.0, device) * 1e9
    out = {"shape": shape, "dtype": dtype, "device": device.type, "parameters": base.info["parameters"],
           "load_s": round(loaded_s, 1), "load_mib": round(load_mib), "train_peak_mib": round(peak),
           "memz_tokens_per_s": round(memz_tps, 1), "plain_tokens_per_s": round(plain_tps, 1),
           "ratio_vs_plain": round(memz_tps / plain_tps, 2), "steps": len(result.losses),
           "share_of_peak": round(flops / peak_flops, 3), "math_dtype": str(math_dtype).removeprefix("torch."),
           "final_loss": result.losses[-1]}
    del model, base
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["135m", "360m", "1.7b", "7b"], choices=list(SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=None, help="default: every precision this device has")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps of 5 examples each")
    ap.add_argument("--tokenizer", type=Path, default=None, help="a folder with a tokenizer (default: the bundled)")
    ap.add_argument("--quick", action="store_true", help="the tiny shape, 2 steps: a harness check")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep each built model in KEEP/SHAPE-DTYPE (for bench/live.py --base-model)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.steps = ["tiny"], 2
    if args.tokenizer is None:
        from memzd.model import _bundled_folder
        args.tokenizer = _bundled_folder()
    from memzd.model import pick_device

    device = pick_device(args.backend)
    dtypes = args.dtypes or (["bf16", "fp32"] if device.type == "cuda" else
                             ["fp32"] + (["bf16"] if fast_bf16(device) else []))
    torch.set_num_threads(Config().training.threads or os.cpu_count())
    results = {"machine": machine(), "device": device.type, "runs": [], "skipped": []}
    for shape in args.shapes:
        for dtype in dtypes:
            dims = SHAPES[shape]
            est_params = (dims["num_hidden_layers"] * (4 * dims["hidden_size"] ** 2 + 3 * dims["hidden_size"]
                          * dims["intermediate_size"]) + 49152 * dims["hidden_size"] * 2)
            # Fitted on this script's CPU runs (135m-1.7b): peak RSS ~1.5x the weights + 1.5 GiB.
            need = (est_params * BYTES[dtype] / 2**20 * 1.5 + 1536 if device.type == "cpu"
                    else est_params * BYTES[dtype] / 2**20 * 1.4)
            if need > available_mib(device):
                why = f"needs ~{need / 1024:.0f} GiB, {available_mib(device) / 1024:.0f} GiB free"
                print(f"{shape} {dtype}: skipped ({why})", flush=True)
                results["skipped"].append({"shape": shape, "dtype": dtype, "why": why})
                continue
            with tempfile.TemporaryDirectory(prefix=f"memz-scale-{shape}-") as tmp:
                where = args.keep / f"{shape}-{dtype}" if args.keep else Path(tmp) / "model"
                folder = build(shape, args.tokenizer, dtype, where, device)
                r = measure(shape, dtype, folder, args.backend, args.steps)
            results["runs"].append(r)
            print(f"{shape} {dtype}: load {r['load_mib']} MiB, train peak {r['train_peak_mib']} MiB, memz "
                  f"{r['memz_tokens_per_s']} tok/s vs plain {r['plain_tokens_per_s']} ({r['ratio_vs_plain']}x), "
                  f"{100 * r['share_of_peak']:.1f}% of the {r['math_dtype']} matmul peak", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
