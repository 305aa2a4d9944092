"""GPU microbenchmarks that ground the step-time model: achieved HBM bandwidth, matrix-multiply
throughput by shape and precision, and decode-attention time by batch and context.

    python bench/gpu_microbench.py --out DIR [--gpu h200] [--quick]

Needs PyTorch with a CUDA device (it is not a project dependency: the GPU machine has it). Without
a CUDA device it measures nothing and exits with status 2; ``--device cpu`` runs the same code
on the CPU only to check that the script works, and labels its output as such.

Method: every figure is the median of ``--repeats`` timed runs (CUDA events) after warm-up runs;
inputs are random (not zeros, which run faster on some GPUs).

* bandwidth: a device-to-device copy (bytes read + written) and a sum reduction (bytes read) of a
  large tensor; achieved TB/s and its fraction of the catalog's peak;
* GEMM: (tokens x K) @ (K x N) for the projection shapes of Llama-3.1-8B/70B, tokens from 1 to 8192,
  in BF16 and FP8 (``torch._scaled_mm``, where the GPU supports it); TFLOP/s, fraction of the
  catalog's dense peak, and achieved bytes/s for the memory-bound small-token shapes;
* attention: decode (one query token per sequence) with grouped-query heads as in Llama-3.1-70B
  per GPU at tensor parallelism 8 (8 query heads, 1 KV head, head dim 128) via
  ``scaled_dot_product_attention``, batch x context grid; seconds and achieved KV bytes/s.

Writes DIR/bandwidth.csv, DIR/gemm.csv, DIR/attention.csv and DIR/summary.json (the comparison of
achieved fractions with the calibrated ``hbm_bw_efficiency`` and ``compute_efficiency``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "sim" / "data"

GEMM_SHAPES = {  # (K, N) of the per-layer projections
    "llama8b_qkv": (4096, 6144), "llama8b_o": (4096, 4096), "llama8b_up_gate": (4096, 28672),
    "llama8b_down": (14336, 4096), "llama70b_up_gate_tp2": (8192, 28672), "llama70b_down_tp2": (14336, 8192),
}
TOKENS = [1, 8, 16, 32, 128, 512, 2048, 8192]
ATTN_BATCH = [1, 8, 32, 128]
ATTN_CTX = [512, 2048, 8192, 32768]


def timer(torch, device: str, fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() over `repeats` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bandwidth(torch, device: str, repeats: int, gib: float) -> list[dict]:
    n = int(gib * 2**30 / 2)
    x = torch.randn(n, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    rows = []
    t = timer(torch, device, lambda: y.copy_(x), repeats)
    rows.append({"test": "copy", "bytes": 2 * x.numel() * 2, "seconds": t, "tb_s": 2 * x.numel() * 2 / t / 1e12})
    t = timer(torch, device, lambda: x.sum(), repeats)
    rows.append({"test": "sum", "bytes": x.numel() * 2, "seconds": t, "tb_s": x.numel() * 2 / t / 1e12})
    return rows


def gemm(torch, device: str, repeats: int, quick: bool) -> list[dict]:
    rows = []
    fp8 = device == "cuda" and hasattr(torch, "float8_e4m3fn") and torch.cuda.get_device_capability() >= (8, 9)
    shapes = dict(list(GEMM_SHAPES.items())[:2]) if quick else GEMM_SHAPES
    tokens = TOKENS[:3] if quick else TOKENS
    for name, (k, n) in shapes.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device=device)
        for m in tokens:
            a = torch.randn(m, k, dtype=torch.bfloat16, device=device)
            t = timer(torch, device, lambda a=a, w=w: a @ w.t(), repeats)
            rows.append(_gemm_row(name, "bf16", m, k, n, t, 2))
            if fp8 and m % 16 == 0:  # FP8 GEMMs need dimensions in multiples of 16
                a8, w8 = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
                one = torch.ones((), device=device)
                try:
                    t = timer(torch, device, lambda a8=a8, w8=w8, one=one: torch._scaled_mm(
                        a8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), repeats)
                except RuntimeError as err:
                    print(f"warning: FP8 GEMM {name} tokens={m} failed, skipped: {err}", file=sys.stderr)
                    fp8 = False
                    continue
                rows.append(_gemm_row(name, "fp8", m, k, n, t, 1))
    return rows


def _gemm_row(name: str, precision: str, m: int, k: int, n: int, t: float, bytes_per: int) -> dict:
    flops = 2.0 * m * k * n
    moved = (m * k + k * n) * bytes_per + m * n * 2
    return {"shape": name, "precision": precision, "tokens": m, "k": k, "n": n, "seconds": t,
            "tflops": flops / t / 1e12, "tb_s": moved / t / 1e12}


def attention(torch, device: str, repeats: int, quick: bool) -> list[dict]:
    import torch.nn.functional as F

    rows = []
    hq, hkv, d = 8, 1, 128
    for b in ATTN_BATCH[:2] if quick else ATTN_BATCH:
        for ctx in ATTN_CTX[:2] if quick else ATTN_CTX:
            q = torch.randn(b, hq, 1, d, dtype=torch.bfloat16, device=device)
            kk = torch.randn(b, hkv, ctx, d, dtype=torch.bfloat16, device=device)
            v = torch.randn(b, hkv, ctx, d, dtype=torch.bfloat16, device=device)
            t = timer(torch, device, lambda q=q, kk=kk, v=v: F.scaled_dot_product_attention(q, kk, v, enable_gqa=True),
                      repeats)
            kv_bytes = 2 * b * hkv * ctx * d * 2
            rows.append({"batch": b, "context": ctx, "q_heads": hq, "kv_heads": hkv, "head_dim": d, "seconds": t,
                         "kv_tb_s": kv_bytes / t / 1e12,
                         "tflops": 4.0 * b * hq * d * ctx / t / 1e12})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gpu", default="h200", help="catalog GPU to compare with (default h200)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu only checks the script runs")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--gib", type=float, default=4.0, help="bandwidth test size, GiB")
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("error: PyTorch is not installed; nothing measured", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    import yaml  # the GPU machine has PyYAML but not the project's other dependencies

    gpus = yaml.safe_load((DATA / "gpus.yaml").read_text(encoding="utf-8"))
    if args.gpu not in gpus:
        print(f"error: --gpu {args.gpu!r} is not in the catalog ({', '.join(gpus)})", file=sys.stderr)
        return 2
    spec = gpus[args.gpu]
    cal = yaml.safe_load((DATA / "calibration.yaml").read_text(encoding="utf-8"))["perf"]
    peak_bw = spec["hbm_bw_tb_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    bw = bandwidth(torch, args.device, args.repeats, args.gib)
    gm = gemm(torch, args.device, args.repeats, args.quick)
    at = attention(torch, args.device, args.repeats, args.quick)
    for r in bw:
        r["fraction_of_peak"] = r["tb_s"] / peak_bw
    for r in gm:
        peak = spec["tflops"].get(r["precision"])
        r["fraction_of_peak_flops"] = r["tflops"] / peak if peak else float("nan")
        r["fraction_of_peak_bw"] = r["tb_s"] / peak_bw
    for r in at:
        r["fraction_of_peak_bw"] = r["kv_tb_s"] / peak_bw
    write_csv(args.out / "bandwidth.csv", bw)
    write_csv(args.out / "gemm.csv", gm)
    write_csv(args.out / "attention.csv", at)
    big = [r for r in gm if r["tokens"] >= 2048]
    small = [r for r in gm if r["tokens"] <= 8]
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (script check only, not a measurement)",
        "compared_with": args.gpu,
        "hbm_fraction_copy": bw[0]["fraction_of_peak"],
        "hbm_fraction_read": bw[1]["fraction_of_peak"],
        "gemm_large_fraction_of_peak_median": statistics.median(r["fraction_of_peak_flops"] for r in big) if big else None,
        "gemm_small_bw_fraction_median": statistics.median(r["fraction_of_peak_bw"] for r in small) if small else None,
        "attention_decode_bw_fraction_median": statistics.median(r["fraction_of_peak_bw"] for r in at),
        "calibrated_hbm_bw_efficiency": cal["hbm_bw_efficiency"],
        "calibrated_compute_efficiency": cal["compute_efficiency"],
    }
    tmp = args.out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    tmp.replace(args.out / "summary.json")
    for k, v in summary.items():
        print(f"{k:40s} {v if not isinstance(v, float) else f'{v:.3f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
