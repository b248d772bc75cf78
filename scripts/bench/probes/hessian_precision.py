"""How exact is X^T X on an H100 in TF32, against fp64, and what does each way cost?

X imitates a down_proj input: fp16, channel scales spread over three decades, and every 160th token (a
row's first, where attention-sink tokens sit) carrying massive values in four channels. For each way of
computing H = X^T X it prints the time per 16k tokens and the errors against fp64: the mean signed relative
error of the diagonal (a bias there moves H toward indefinite), the largest relative diagonal error, and
||H - H64||_F / ||H64||_F.

    python scripts/bench/probes/hessian_precision.py --out $OUT/hessian_precision.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def make_inputs(tokens: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    scales = torch.exp(torch.randn(width, device="cuda", generator=gen) * 1.2)
    x = torch.randn(tokens, width, device="cuda", generator=gen) * scales
    x[::160, :4] = 3000.0 * torch.sign(torch.randn(tokens // 160 + (tokens % 160 > 0), 4, device="cuda", generator=gen))
    return x.clamp(-60000, 60000).half()


def hessian(x16: torch.Tensor, tf32: bool, chunk: int) -> torch.Tensor:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    flat = x16.float()
    H = torch.zeros((flat.shape[1], flat.shape[1]), dtype=torch.float32, device=flat.device)
    for part in flat.split(chunk or flat.shape[0]):
        H.addmm_(part.T, part)
    return H


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--widths", default="1536,8960")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {"card": torch.cuda.get_device_name(0), "tokens": args.tokens, "runs": []}
    for width in map(int, args.widths.split(",")):
        x16 = make_inputs(args.tokens, width)
        exact = x16.double().T @ x16.double()
        diag = exact.diagonal()
        for name, tf32, chunk in (("fp32", False, 0), ("tf32", True, 0), ("tf32-chunk4096", True, 4096),
                                  ("tf32-chunk1024", True, 1024), ("tf32-chunk256", True, 256)):
            H = hessian(x16, tf32, chunk)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(5):
                H = hessian(x16, tf32, chunk)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / 5
            rel = (H.double().diagonal() - diag) / diag
            row = {"width": width, "way": name, "ms_per_16k_tokens": round(seconds * 1e3 * 16384 / args.tokens, 3),
                   "diag_bias": float(rel.mean()), "diag_max": float(rel.abs().max()),
                   "frobenius": float((H.double() - exact).norm() / exact.norm())}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
