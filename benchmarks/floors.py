"""Measure the device's two ceilings: copy bandwidth and matrix rate (GPU only).

python benchmarks/floors.py [--json PATH]. Bandwidth counts bytes read plus bytes written of a
1 GiB device-to-device copy; the matrix rate is an 8192^3 product on random data, in bf16 and in
fp32 (IEEE, TF32 off) and TF32. Times are medians of triton.testing.do_bench (CUDA events).
"""
import argparse
import json

import torch
import triton.testing


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("floors.py needs a CUDA device")
    n_bytes = 2**30
    src = torch.randn(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=500, return_mode="median")
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "triton": triton.__version__, "copy_gbytes_per_s": 2 * n_bytes / ms / 1e6}
    n = 8192
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp32", torch.float32, False),
                              ("tf32", torch.float32, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
        result[f"matmul_{name}_tflops"] = 2 * n**3 / ms / 1e9
    torch.backends.cuda.matmul.allow_tf32 = False
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
