"""``python -m stmc.export`` / ``stmc-export``: export a model's step to ONNX or LiteRT and check the graph's stream
against offline PyTorch."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from stmc.errors import StmcError
from stmc.export import litert, onnx, read_metadata
from stmc.export import open as open_graph
from stmc.export.graph import offline_error
from stmc.model.unet import UNet
from stmc.stream.engines import ENGINES


def load_model(ckpt: str | None, depth: int, lookahead: int, width: float, seed: int) -> UNet:
    """A checkpoint's model, or (``ckpt=None``) a fresh untrained one for dry runs."""
    from stmc.model.enhancer import Enhancer

    if ckpt:
        return Enhancer.from_checkpoint(ckpt).model
    torch.manual_seed(seed)
    return UNet(depth=depth, lookahead=lookahead, width=width).eval()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stmc.export OUT.onnx|OUT.tflite [--ckpt CKPT | --lookahead L --width W]``: export and verify."""
    parser = argparse.ArgumentParser(prog="stmc-export", description=main.__doc__)
    parser.add_argument(
        "out",
        help="path of the step graph: .onnx (look-ahead models add <name>.settled.onnx and <name>.flush.onnx) or "
        ".tflite (LiteRT, one file; needs the converter: make litert)",
    )
    parser.add_argument("--ckpt", help="checkpoint from train.py; without it a fresh untrained model (dry run)")
    parser.add_argument("--depth", type=int, default=7, help="dry-run model depth")
    parser.add_argument("--lookahead", type=int, default=0, help="dry-run model look-ahead frames")
    parser.add_argument("--width", type=float, default=1.0, help="dry-run model channel multiplier")
    parser.add_argument("--seed", type=int, default=0, help="dry-run model initialisation seed")
    parser.add_argument("--frames-per-call", type=int, default=1, help="spectrum frames per step call (hops)")
    parser.add_argument(
        "--method",
        default="stmc",
        choices=list(ENGINES),
        help="the step exported to .tflite: stmc, inc or window (ONNX: stmc only)",
    )
    parser.add_argument("--batch", type=int, default=1, help="streams per call of a .tflite graph (static shapes)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 weights and activations (static post-training quantization, calibrated on real audio)",
    )
    parser.add_argument(
        "--calibration",
        help="--int8: a folder of 16 kHz audio to calibrate on (default: the demo corpus's validation recordings)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the runtime vs PyTorch comparison")
    args = parser.parse_args(argv)
    is_litert = Path(args.out).suffix == ".tflite"
    if args.calibration and not args.int8:
        parser.exit(2, "error: --calibration is for --int8 exports; add --int8 or drop it\n")
    quantize = "int8" if args.int8 else None
    if not is_litert and args.method != "stmc":
        parser.exit(1, f"error: --method {args.method} exports to LiteRT only; give an OUT.tflite\n")
    try:
        model = load_model(args.ckpt, args.depth, args.lookahead, args.width, args.seed)
        if is_litert:
            path = litert.to_litert(
                model, args.out, args.method, args.frames_per_call, args.batch, quantize, args.calibration
            )
        else:
            path = onnx.to_onnx(model, args.out, args.frames_per_call, quantize=quantize, calibration=args.calibration)
    except StmcError as err:
        parser.exit(1, f"error: {err}\n")
    meta = read_metadata(path)
    roles = [role for role in ("settled", "flush") if meta.get(role)]
    if is_litert:
        print(f"wrote {path}" + "".join(f" (+ the {role} signature)" for role in roles))
    else:
        print(f"wrote {path}" + "".join(f" and {onnx.companion_path(path, role)}" for role in roles))
    print(
        f"  {meta['method']} step; state: {len(json.loads(meta['state_shapes']))} tensors, look-ahead "
        f"D={meta['delay']} frames, {meta['frames_per_call']} frame(s) per call, {meta.get('precision', 'float32')}"
    )
    if is_litert:
        print(f"  LiteRT operators: {', '.join(litert.operator_names(path))}")
    if not args.no_check:
        frames = args.frames_per_call * max(1, 64 // args.frames_per_call)
        stream = open_graph(path)
        batch = args.batch if is_litert else 2
        error = offline_error(model, stream, frames=frames, batch=batch)
        runtime = "LiteRT" if is_litert else "onnxruntime"
        print(f"  {runtime} vs offline PyTorch over {frames} frames: max |error| = {error:.2e}")
        if quantize:
            print(
                "  (int8: the error is the quantization's; measure its SI-SNRi with evaluate.py "
                f"methods=[offline,{'litert' if is_litert else 'onnx'}] graph={path})"
            )
        elif error > 1e-4:
            print("  error above 1e-4")
            return 1
    return 0
