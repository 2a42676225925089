"""Speed: memz against the plain way of doing the same job, on this machine, in one run.

    python bench/speed.py            # the bundled model, ~6-9 minutes on 2 CPU cores
    python bench/speed.py --quick    # the tiny in-code model from tests/tiny.py, seconds

Four measurements, each with its baseline taken in the same run:

- training: tokens/s (prompt + answer, no padding) of memzd.trainer.train on 64
  examples of 20-100 tokens over `--epochs` epochs (4), against (a) a plain peft loop, fp32, one example
  per step, HF loss with full logits, and (b) the same padded to the longest
  in batches of 16 (the same epochs); memz again with each of its speed
  levers off in turn (frozen-prefix cache, eager attention, bf16 weight
  copies) to show what each is worth; plus the share of this CPU's fp32 and bf16 matmul peak;
- answers: p50/p95 latency of a 32-token greedy answer through requests/ ->
  responses/ of a real `memzd` (with a checkpoint, so the key-memory gate
  runs), against model.generate on the same model and adapter in this
  process; then again while the daemon trains a batch;
- start-up: memzd start to the first answered request (model cache warm);
- HTTP: the same answers over POST /search against the folder path and direct
  generate, what HTTP adds to an answer (the client's time minus the daemon's
  own latency_ms), time to the first streamed token of /v1/chat/completions, and 20
  chat clients at once while a batch trains (all answered, p95 vs idle);
- ingestion: examples/s from inbox files into SQLite (10 files), with the
  peak memory of a 10-file and a 1-file run (streaming keeps them equal),
  against a plain loader (whole file, one INSERT per row);
- commands: wall time of the memzctl commands that need no model (status,
  checkpoints, --version, --help), against `python -c pass`; target < 0.5 s.

Figures go to bench/results/speed.json and are printed as a table. Timings on
a shared machine are noisy: each training method runs `--rounds` times in
turn and its best round counts; latencies alternate direct and daemon calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # memzd and memzctl of this environment, activated or not
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from memzd import lora, tokens  # noqa: E402
from memzd.config import Config  # noqa: E402
from memzd.trainer import Levers, resolve_precision, train  # noqa: E402

WORDS = ("apple river stone cloud garden silver engine market violet harbor candle orbit meadow copper "
         "lantern falcon quiet ember tunnel saddle pepper glacier mosaic thunder willow compass velvet "
         "island bridge cobalt").split()
TOPICS = ["the ocean", "a old lighthouse", "winter mornings", "the history of bread", "a city at night",
          "mountain trains", "honeybees", "the first computers", "rainforests", "a quiet library",
          "paper boats", "volcanoes", "the moon landing", "jazz music", "desert roads", "tea ceremonies"]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def machine() -> dict:
    flags, name = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = None
    return {"cpu": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(mem, 1) if mem else None, "torch": torch.__version__,
            "python": platform.python_version(), "os": platform.platform(),
            "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"}),
            "load_average_at_start": os.getloadavg(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def matmul_peak(n: int, dtype: torch.dtype, seconds: float, device: torch.device | str = "cpu") -> float:
    """GFLOP/s of a large square matmul (best of repeated timings) on `device`."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


# -- data -------------------------------------------------------------------------

def training_examples(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[tokens.Encoded]:
    """n examples whose encoded length is uniform in [lo, hi] tokens (chat template included)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        target = rng.randint(lo, hi)
        q, a = ["Tell"], ["Sure"]
        while True:
            enc = tokens.encode({"system": "Be brief.", "input": " ".join(q), "output": " ".join(a)},
                                tokenizer, 512)
            if len(enc.input_ids) >= target:
                break
            (q if rng.random() < 0.5 else a).append(rng.choice(WORDS))
        out.append(enc)
    return out


def teach_lines(n: int, seed: int) -> list[dict]:
    """Long-answer examples (so a 32-token answer is really 32 tokens)."""
    rng = random.Random(seed)
    return [{"input": f"Describe {TOPICS[i % len(TOPICS)]} in detail." + ("" if i < len(TOPICS) else f" ({i})"),
             "output": " ".join(rng.choice(WORDS) for _ in range(60))} for i in range(n)]


# -- training ---------------------------------------------------------------------

def train_flops(model, encoded: list[tokens.Encoded]) -> float:
    """Useful FLOPs of one LoRA pass over `encoded`: 2N forward + 2N backward (grads of
    activations; frozen weights get none) per token, the LM head on answer tokens only,
    and causal attention (fwd 2*n^2*d, bwd twice that) per layer."""
    cfg = tokens.causal_lm(model).config
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    linear = sum(p.numel() for n, p in model.named_parameters()
                 if p.dim() == 2 and "embed" not in n and "lm_head" not in n and "lora_" not in n)
    n_tok = sum(len(e.input_ids) for e in encoded)
    n_ans = sum(e.n_answer for e in encoded)
    attn = sum(6 * len(e.input_ids) ** 2 * d * layers for e in encoded)
    return 4 * linear * n_tok + 4 * vocab * d * n_ans + attn


def plain_loop(model, encoded: list[tokens.Encoded], batch: int, pad_id: int, lr: float,
               epochs: int = 1) -> tuple[float, float]:
    """The tutorial loop: fp32, HF loss on full logits, right-padded batches in data order.
    Returns (tokens/s, mean loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    n_tok, losses, start = 0, [], time.perf_counter()
    for i in [i for _ in range(epochs) for i in range(0, len(encoded), batch)]:
        chunk = encoded[i:i + batch]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in chunk])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk])
        labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in chunk])
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        n_tok += int(mask.sum())
    model.eval()
    return n_tok / (time.perf_counter() - start), sum(losses) / len(losses)


def bench_training(base, n_examples: int, rounds: int, epochs: int) -> dict:
    cfg = Config()
    cfg.training.eval_every = 0
    model = lora.wrap(base.model, cfg.lora)
    pad = base.tokenizer.pad_token_id
    encoded = training_examples(base.tokenizer, n_examples, 20, 100)
    per_step = cfg.training.batch_size * cfg.training.grad_accum
    flops_epoch = train_flops(model, encoded)
    auto = resolve_precision(base.device, "auto")

    def fresh():
        torch.manual_seed(0)
        lora.start_training(model, cfg.lora, None)

    def memz(precision: str, **levers):
        fresh()
        cfg.training.max_steps = max(1, epochs * -(-len(encoded) // per_step))
        run = replace(cfg.training, precision=precision, stop_loss=0.0, replay=0)  # every step, as the baselines
        r = train(model, encoded, run, pad_id=pad, device=base.device, levers=Levers(**levers))
        return r.tokens / r.seconds, r.losses, r.tokens / sum(len(e.input_ids) for e in encoded)

    # Every method trains the same examples for the same number of epochs (memz
    # trains a batch for several: its stop rule took 4-6 on ten facts).
    methods = {
        "plain_a_one_per_step_fp32": lambda: plain_loop(model, encoded, 1, pad, cfg.training.lr, epochs),
        "plain_b_padded_batch16_fp32": lambda: plain_loop(model, encoded, 16, pad, cfg.training.lr, epochs),
        "memz": lambda: memz("auto"),
        "memz_fp32": lambda: memz("fp32"),
        # memz with one speed lever off at a time: what each is worth
        **{f"memz_without_{lever.name}": partial(memz, "auto", **{lever.name: False}) for lever in fields(Levers)},
    }
    # warm-up: one small pass each (allocator, oneDNN kernels for the shapes)
    fresh()
    plain_loop(model, encoded[:4], 1, pad, 1e-4)
    plain_loop(model, encoded[:16], 16, pad, 1e-4)
    for p in ("auto", "fp32"):
        fresh()
        train(model, encoded, replace(Config().training, max_steps=1, precision=p, stop_loss=0.0),
              pad_id=pad, device=base.device)
    runs: dict[str, list[float]] = {k: [] for k in methods}
    extra: dict[str, object] = {}
    for _ in range(rounds):
        for name, fn in methods.items():
            fresh()
            out = fn()
            runs[name].append(out[0])
            print(f"  {name}: {out[0]:.0f} tokens/s", flush=True)
            if name in ("memz", "memz_fp32"):
                extra[name + "_losses"] = out[1]
                extra["epochs"] = out[2]
    best = {k: max(v) for k, v in runs.items()}
    lf, lb = extra["memz_fp32_losses"], extra["memz_losses"]
    peak32 = matmul_peak(2048 if n_examples > 16 else 512, torch.float32, 3.0 if n_examples > 16 else 0.3)
    peak16 = matmul_peak(2048 if n_examples > 16 else 512, torch.bfloat16, 3.0 if n_examples > 16 else 0.3)
    flops_per_token = flops_epoch / sum(len(e.input_ids) for e in encoded)
    achieved = best["memz"] * flops_per_token / 1e9
    return {
        "examples": len(encoded), "tokens_per_epoch": sum(len(e.input_ids) for e in encoded),
        "answer_tokens_per_epoch": sum(e.n_answer for e in encoded),
        "lengths": [min(len(e.input_ids) for e in encoded), max(len(e.input_ids) for e in encoded)],
        "memz_precision": auto, "memz_steps": len(lb), "rounds": rounds, "epochs": epochs,
        "lever_gains": {k[len("memz_without_"):]: best["memz"] / v for k, v in best.items()
                        if k.startswith("memz_without_")},
        "tokens_per_s": best, "tokens_per_s_all_rounds": runs,
        "ratio_vs_a": best["memz"] / best["plain_a_one_per_step_fp32"],
        "ratio_vs_b": best["memz"] / best["plain_b_padded_batch16_fp32"],
        "bf16_vs_fp32": best["memz"] / best["memz_fp32"],
        "loss_fp32": lf, "loss_auto": lb,
        "loss_max_rel_diff": max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(lf, lb)),
        "peak_gflops": {"fp32": peak32, "bf16": peak16},
        "memz_gflops": achieved, "flops_per_token": flops_per_token,
        "memz_share_of_peak": {"fp32": achieved / peak32, "bf16": achieved / peak16},
    }


# -- the daemon -------------------------------------------------------------------

class Daemon:
    """A real memzd subprocess on a home, with request/response helpers."""

    def __init__(self, home: Path):
        self.home, self.proc, self.log = home, None, None
        self.port = free_port()

    def start(self) -> float:
        self.log = open(self.home / "bench-daemon.log", "ab")
        t = time.perf_counter()
        self.proc = subprocess.Popen([str(BIN / "memzd"), "--home", str(self.home),
                                      "--http", f"127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        return t

    def http(self, path: str, body: dict, stream: bool = False) -> tuple[float, float, dict | str]:
        """(seconds to the first streamed text, or to the answer; seconds in all; the answer)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as r:
            if not stream:
                payload = json.loads(r.read())
                t = time.perf_counter() - t0
                return t, t, payload
            first, text = None, ""
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                piece = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if piece and first is None:
                    first = time.perf_counter() - t0
                text += piece
            return first or time.perf_counter() - t0, time.perf_counter() - t0, text

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()

    def put_request(self, rid: str, prompt: str, max_tokens: int) -> float:
        tmp = self.home / "requests" / f".{rid}.tmp"
        tmp.write_text(json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}))
        t = time.perf_counter()
        os.replace(tmp, self.home / "requests" / f"{rid}.json")
        return t

    def wait_response(self, rid: str, timeout: float = 300) -> tuple[float, dict]:
        path = self.home / "responses" / f"{rid}.json"
        end = time.perf_counter() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"memzd exited ({self.proc.returncode}); see {self.home / 'bench-daemon.log'}")
            if time.perf_counter() > end:
                raise TimeoutError(f"no response {rid} in {timeout}s")
            time.sleep(0.002)
        t = time.perf_counter()
        return t, json.loads(path.read_text())

    def ask(self, rid: str, prompt: str, max_tokens: int) -> tuple[float, dict]:
        t0 = self.put_request(rid, prompt, max_tokens)
        t1, body = self.wait_response(rid)
        if "error" in body:
            raise RuntimeError(f"request {rid} failed: {body['error']}")
        return t1 - t0, body

    def query_db(self, sql: str):
        if not (self.home / "memz.db").exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{self.home / 'memz.db'}?mode=ro", uri=True, timeout=30)
        except sqlite3.OperationalError:
            return []
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def wait_for(self, what, timeout: float, label: str) -> None:
        end = time.perf_counter() + timeout
        while not what():
            if self.proc.poll() is not None:
                raise RuntimeError(f"memzd exited ({self.proc.returncode}) waiting for {label}; "
                                   f"see {self.home / 'bench-daemon.log'}")
            if time.perf_counter() > end:
                raise TimeoutError(f"waited {timeout}s for {label}")
            time.sleep(0.05)

    def drop(self, name: str, lines: list[dict]) -> None:
        tmp = self.home / "inbox" / f".{name}.tmp"
        tmp.write_text("".join(json.dumps(l) + "\n" for l in lines))
        os.replace(tmp, self.home / "inbox" / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(home: Path, base_model: str, max_steps: int) -> None:
    cfg = yaml.safe_load((home / "config.yaml").read_text()) or {}
    cfg.update(base_model=base_model, update_mode="immediate")
    cfg.setdefault("training", {}).update(max_steps=max_steps, eval_every=0)
    cfg.setdefault("evaluation", {}).update(anchor_provider="none")
    cfg["daemon"] = {"stable_seconds": 0.0, "rescan_seconds": 1.0}
    (home / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def bench_daemon(base, base_model: str, quick: bool) -> dict:
    """Start-up, idle latency (vs direct generate) and latency while training."""
    from peft import PeftModel

    n_idle, n_busy, max_tokens = (3, 3, 8) if quick else (20, 20, 32)
    root = Path(tempfile.mkdtemp(prefix="memz-speed-"))
    home = root / "home"
    subprocess.run([str(BIN / "memzctl"), "init", str(home)], check=True,
                   stdout=subprocess.DEVNULL)
    write_config(home, base_model, max_steps=4)
    d = Daemon(home)
    out: dict = {"max_tokens": max_tokens}
    try:
        # 1. a first checkpoint (so routing's key memory and the adapter both run)
        teach = teach_lines(8, seed=1)
        d.start()
        d.drop("teach.jsonl", teach)
        d.wait_for(lambda: d.query_db("SELECT count(*) FROM checkpoints")[:1] not in ([], [(0,)]),
                   600, "the first checkpoint")
        d.stop()
        ckpt = d.query_db("SELECT id FROM checkpoints ORDER BY seq DESC LIMIT 1")[0][0]
        out["checkpoint"] = ckpt

        # 2. start-up: a request waits in requests/ before memzd starts
        write_config(home, base_model, max_steps=10_000)
        (home / "requests").mkdir(exist_ok=True)
        t0 = d.put_request("startup", teach[0]["input"], max_tokens)
        t_start = d.start()
        t1, body = d.wait_response("startup", 300)
        out["startup_s"] = t1 - t_start
        out["startup_answer_ms"] = body.get("latency_ms")
        del t0

        # 3. idle: alternate direct generate (this process) and a daemon request
        from memzd.model import load_base  # a fresh copy: base.model already carries memz's LoRA layers
        direct_model = PeftModel.from_pretrained(load_base(base_model, "cpu").model,
                                                 str(home / "checkpoints" / ckpt))
        direct_model.eval()
        tok = base.tokenizer

        def direct(prompt: str) -> tuple[float, int]:
            t = time.perf_counter()
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            with torch.inference_mode():
                gen = direct_model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                                            pad_token_id=tok.pad_token_id)
            tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            return time.perf_counter() - t, gen.shape[1] - ids["input_ids"].shape[1]

        direct(teach[0]["input"])
        d.ask("warm", teach[0]["input"], max_tokens)
        d.http("/search", {"prompt": teach[0]["input"], "max_tokens": max_tokens, "temperature": 0})
        lat_d, lat_m, lat_h, first_token, server_ms, n_gen, routed = [], [], [], [], [], [], []
        http_added, folder_added = [], []
        for i in range(n_idle):
            prompt = teach[i % len(teach)]["input"]
            dt, n = direct(prompt)
            lat_d.append(dt)
            n_gen.append(n)
            mt, body = d.ask(f"idle{i}", prompt, max_tokens)
            lat_m.append(mt)
            server_ms.append(body["latency_ms"])
            routed.append(body.get("routed_to"))
            _, total, payload = d.http("/search", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
            lat_h.append(total)
            http_added.append(total - payload["latency_ms"] / 1000)  # the answer itself taken out
            folder_added.append(mt - body["latency_ms"] / 1000)
            first_token.append(d.http("/v1/chat/completions", {
                "model": "memz", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True}, stream=True)[0])
        out["http"] = {"p50_s": percentile(lat_h, 50), "p95_s": percentile(lat_h, 95),
                       "first_token_p50_s": percentile(first_token, 50),
                       "p50_minus_folder_ms": 1000 * (percentile(lat_h, 50) - percentile(lat_m, 50)),
                       "p50_minus_direct_ms": 1000 * (percentile(lat_h, 50) - percentile(lat_d, 50)),
                       "added_p50_ms": 1000 * percentile(http_added, 50),
                       "folder_added_p50_ms": 1000 * percentile(folder_added, 50)}
        out["direct"] = {"p50_s": percentile(lat_d, 50), "p95_s": percentile(lat_d, 95),
                         "mean_new_tokens": sum(n_gen) / len(n_gen)}
        out["idle"] = {"p50_s": percentile(lat_m, 50), "p95_s": percentile(lat_m, 95),
                       "server_p50_ms": percentile(server_ms, 50), "routed_to": routed}
        out["idle_p50_vs_direct"] = out["idle"]["p50_s"] / out["direct"]["p50_s"]
        del direct_model

        # 4. while a batch trains
        d.drop("busy.jsonl", [{"input": f"Busy question {i}: " + l["input"], "output": l["output"]}
                              for i, l in enumerate(teach_lines(64, seed=2))])
        d.wait_for(lambda: any("training batch" in (r[0] or "") and "step" in (r[0] or "")
                               for r in d.query_db("SELECT value FROM state WHERE key = 'activity'")),
                   300, "training to start")
        rng = random.Random(3)
        busy, busy_server = [], []
        for i in range(n_busy):
            time.sleep(rng.uniform(0, 0.5))  # land anywhere within a step
            mt, body = d.ask(f"busy{i}", teach[i % len(teach)]["input"], max_tokens)
            busy.append(mt)
            busy_server.append(body["latency_ms"])
        still = d.query_db("SELECT value FROM state WHERE key = 'activity'")
        out["training"] = {"p50_s": percentile(busy, 50), "p95_s": percentile(busy, 95),
                           "server_p50_ms": percentile(busy_server, 50),
                           "still_training_at_end": bool(still and "training" in still[0][0])}
        out["training_p95_vs_idle_p95"] = out["training"]["p95_s"] / out["idle"]["p95_s"]

        # 5. twenty chat clients at once over HTTP, while the batch still trains
        clients, errors, lock = [], [], threading.Lock()

        def chat(i: int) -> None:
            try:
                _, total, text = d.http("/v1/chat/completions", {
                    "model": "memz", "messages": [{"role": "user", "content": teach[i % len(teach)]["input"]}],
                    "max_tokens": max_tokens, "temperature": 0, "stream": True}, stream=True)
                with lock:
                    clients.append(total)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(exc))

        n_clients = 5 if quick else 20
        threads = [threading.Thread(target=chat, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        still = d.query_db("SELECT value FROM state WHERE key = 'activity'")
        out["concurrent_chat"] = {"clients": n_clients, "answered": len(clients), "errors": errors,
                                  "p95_s": percentile(clients, 95) if clients else None,
                                  "still_training_at_end": bool(still and "training" in still[0][0])}
        if clients:
            out["concurrent_chat"]["p95_vs_http_idle_p95"] = percentile(clients, 95) / out["http"]["p95_s"]
        steps = d.query_db("SELECT step, at FROM metrics WHERE name = 'finetune_loss' ORDER BY id")
        if len(steps) > 2:
            out["training"]["step_s_median"] = percentile([b[1] - a[1] for a, b in zip(steps, steps[1:])], 50)
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


# -- ingestion --------------------------------------------------------------------

INGEST_CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from memzd.config import Home
from memzd.inbox import ingest_file
from memzd.store import Store
home, mode = Home(Path(sys.argv[2])), sys.argv[3]
home.ensure()
store = Store(home.db_path)
files = sorted(p for p in home.inbox.iterdir() if p.suffix == ".jsonl")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
n = 0
if mode == "memz":
    for p in files:
        n += ingest_file(p, store, home).accepted
else:  # the plain way: read the whole file, one INSERT per row
    import hashlib
    from memzd.examples import parse_example
    fid = store.add_file("plain", "", 0)
    for p in files:
        for number, line in enumerate(p.read_text().splitlines(), 1):
            ex = parse_example(json.loads(line))
            store.db.execute("INSERT OR IGNORE INTO examples (hash, kind, data, file_id, line, created_at) "
                             "VALUES (?, ?, ?, ?, ?, ?)", [ex.hash, ex.kind, ex.json, fid, number, time.time()])
            n += 1
dt = time.perf_counter() - t
rows = store.example_count()
print(json.dumps({"examples": n, "rows": rows, "seconds": dt,
                  "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}))
"""


def bench_ingestion(n_total: int, n_files: int) -> dict:
    def run(files: int, mode: str) -> dict:
        root = Path(tempfile.mkdtemp(prefix="memz-ingest-"))
        try:
            inbox = root / "inbox"
            inbox.mkdir(parents=True)
            per = n_total // files
            for f in range(files):
                with open(inbox / f"part{f:02d}.jsonl", "w") as out:
                    for i in range(per):
                        k = f * per + i
                        out.write(json.dumps({"input": f"What is fact {k}?", "output": f"Fact {k} is {k * 7919 % 10007}.",
                                              "tags": ["user:bench"]}) + "\n")
            res = subprocess.run([sys.executable, "-c", INGEST_CHILD, str(REPO), str(root), mode],
                                 check=True, capture_output=True, text=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["per_s"] = r["examples"] / r["seconds"]
            r["file_mib"] = sum(p.stat().st_size for p in (root / "inbox").rglob("*.jsonl")) / 2**20 / files
            return r
        finally:
            shutil.rmtree(root, ignore_errors=True)

    memz = run(n_files, "memz")
    one_file = run(1, "memz")
    plain = run(n_files, "plain")
    return {"examples": n_total, "files": n_files, "memz": memz, "memz_one_file": one_file, "plain": plain,
            "per_s": memz["per_s"], "ratio_vs_plain": memz["per_s"] / plain["per_s"]}


# -- commands -------------------------------------------------------------------------

COMMAND_TARGET_S = 0.5  # a memzctl command that needs no model starts and finishes in this


def bench_commands(repeats: int) -> dict:
    """Wall time of memzctl commands that need no model, against `python -c pass` (the floor)."""
    home = Path(tempfile.mkdtemp(prefix="memz-commands-"))
    memzctl = str(Path(sys.executable).with_name("memzctl"))
    subprocess.run([memzctl, "init", str(home)], check=True, stdout=subprocess.DEVNULL)
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "memzctl --version": [memzctl, "--version"],
                "memzctl status": [memzctl, "--home", str(home), "status"],
                "memzctl status --json": [memzctl, "--home", str(home), "status", "--json"],
                "memzctl checkpoints": [memzctl, "--home", str(home), "checkpoints"],
                "memzctl --help": [memzctl, "--help"]}
    out = {}
    for name, cmd in commands.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        out[name] = {"p50_s": percentile(times, 50), "max_s": max(times)}
        print(f"  {name}: p50 {out[name]['p50_s']:.3f} s, max {out[name]['max_s']:.3f} s", flush=True)
    shutil.rmtree(home, ignore_errors=True)
    return out


# -- report -----------------------------------------------------------------------

def table(r: dict) -> str:
    t, a, i = r["training"], r.get("answers", {}), r["ingestion"]
    rows = [("| measure | memz | baseline | ratio | target |", "|---|---|---|---|---|")]
    lines = list(rows[0])
    tp = t["tokens_per_s"]
    lines += [
        f"| training tok/s vs (a) 1 example/step fp32 | {tp['memz']:.0f} | {tp['plain_a_one_per_step_fp32']:.0f} "
        f"| {t['ratio_vs_a']:.2f}x | >= 3x |",
        f"| training tok/s vs (b) padded batches of 16 fp32 | {tp['memz']:.0f} | {tp['plain_b_padded_batch16_fp32']:.0f} "
        f"| {t['ratio_vs_b']:.2f}x | >= 1.5x |",
        f"| memz {t['memz_precision']} vs memz fp32 | {tp['memz']:.0f} | {tp['memz_fp32']:.0f} | {t['bf16_vs_fp32']:.2f}x | |",
        *[f"| memz with vs without {lever.replace('_', ' ')} | | | {gain:.2f}x | |"
          for lever, gain in t["lever_gains"].items()],
        f"| share of matmul peak (fp32 {t['peak_gflops']['fp32']:.0f} / bf16 {t['peak_gflops']['bf16']:.0f} GFLOP/s) "
        f"| {t['memz_gflops']:.0f} GFLOP/s | | {100 * t['memz_share_of_peak']['fp32']:.0f}% / "
        f"{100 * t['memz_share_of_peak']['bf16']:.0f}% | |",
    ]
    if a:
        lines += [
            f"| answer p50, idle (s) vs direct generate | {a['idle']['p50_s']:.3f} | {a['direct']['p50_s']:.3f} "
            f"| {a['idle_p50_vs_direct']:.2f}x | <= 1.15x |",
            f"| answer p95, idle (s) vs direct generate | {a['idle']['p95_s']:.3f} | {a['direct']['p95_s']:.3f} "
            f"| {a['idle']['p95_s'] / a['direct']['p95_s']:.2f}x | |",
            f"| answer p95 while training vs idle p95 (s) | {a['training']['p95_s']:.3f} | {a['idle']['p95_s']:.3f} "
            f"| {a['training_p95_vs_idle_p95']:.2f}x | <= 3x |",
            f"| start-up to first answer (s) | {a['startup_s']:.2f} | | | <= 10 s |",
        ]
        if "http" in a:
            h, c = a["http"], a.get("concurrent_chat", {})
            lines += [
                f"| answer p50 over HTTP vs folder (s) | {h['p50_s']:.3f} | {a['idle']['p50_s']:.3f} "
                f"| {h['p50_minus_folder_ms']:+.1f} ms | |",
                f"| answer p50 over HTTP vs direct generate (s) | {h['p50_s']:.3f} | {a['direct']['p50_s']:.3f} "
                f"| {h['p50_minus_direct_ms']:+.1f} ms | |",
                f"| what HTTP adds to an answer, p50 (client time minus the daemon's latency_ms) vs the same "
                f"for the folder path (ms) | {h['added_p50_ms']:.1f} | {h['folder_added_p50_ms']:.1f} | | <= 5 ms |",
                f"| first streamed token p50 (s) vs whole answer p50 | {h['first_token_p50_s']:.3f} | {h['p50_s']:.3f} "
                f"| {h['first_token_p50_s'] / h['p50_s']:.2f}x | |",
                f"| {c.get('clients')} chat clients at once while training: answered, errors | {c.get('answered')} "
                f"| {len(c.get('errors', []))} | | all, 0 |",
                f"| ... their p95 vs idle HTTP p95 (s) | {c.get('p95_s') or 0:.3f} | {h['p95_s']:.3f} "
                f"| {c.get('p95_vs_http_idle_p95') or 0:.2f}x | <= 3x |",
            ]
    for name, c in r.get("commands", {}).items():
        if name != "python -c pass":
            floor = r["commands"]["python -c pass"]["p50_s"]
            lines.append(f"| `{name}` p50 (s) vs python -c pass | {c['p50_s']:.3f} | {floor:.3f} "
                         f"| {c['p50_s'] / floor:.1f}x | < {COMMAND_TARGET_S} s |")
    lines += [
        f"| ingestion examples/s ({i['examples']} in {i['files']} files) vs plain loader | {i['per_s']:.0f} "
        f"| {i['plain']['per_s']:.0f} | {i['ratio_vs_plain']:.2f}x | >= 5000/s |",
        f"| ingestion peak RSS growth, 10 files vs 1 file (MiB) | {i['memz']['rss_growth_mib']:.1f} "
        f"| {i['memz_one_file']['rss_growth_mib']:.1f} | | flat |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny in-code model, small counts (seconds)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per training method (best counts)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs over the 64 training examples, every method")
    ap.add_argument("--skip", action="append", default=[],
                    choices=["training", "answers", "ingestion", "commands"])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speed.json")
    args = ap.parse_args(argv)
    from memzd.model import load_base

    # Everything here runs with the threads memzd uses by default (training.threads),
    # so that the in-process baselines and the daemon compute with the same cores.
    threads = Config().training.threads or os.cpu_count()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    result: dict = {"machine": machine(), "quick": args.quick, "threads": threads}
    if args.quick:
        from tiny import build_tiny_model
        tmp = Path(tempfile.mkdtemp(prefix="memz-tiny-"))
        base_model = str(build_tiny_model(tmp / "tiny"))
    else:
        base_model = "bundled"
    base = load_base(base_model, "cpu")
    result["base_model"] = base.name
    if "training" not in args.skip:
        n, rounds = (16, 1) if args.quick else (64, 1)
        result["training"] = bench_training(base, n, args.rounds or rounds, epochs=args.epochs)
        print(f"training done ({time.perf_counter() - started:.0f}s)", flush=True)
    if "answers" not in args.skip:
        result["answers"] = bench_daemon(base, base_model, args.quick)
        print(f"answers done ({time.perf_counter() - started:.0f}s)", flush=True)
    if "ingestion" not in args.skip:
        result["ingestion"] = bench_ingestion(2_000 if args.quick else 100_000, 10)
    if "commands" not in args.skip:
        result["commands"] = bench_commands(3 if args.quick else 10)
    result["seconds"] = time.perf_counter() - started
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if {"training", "ingestion"}.isdisjoint(args.skip):
        print(table(result))
    print(f"wrote {args.out} in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
