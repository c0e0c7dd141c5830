#!/usr/bin/env python3
"""Makes tests/data/jpeg/: small baseline JPEGs in every layout npurt's own JPEG decoder
takes (and in `fallback/`, two it leaves to the `image` crate), each with Pillow's decode of it stored losslessly as a PNG (the reference the
decoder must match bit for bit). Needs Pillow (13.0.0 was used: libjpeg-turbo 3.2.0)
and libjpeg-turbo's cjpeg (Debian: libjpeg-turbo-progs) for the layouts Pillow cannot
write (4:4:0, mixed sampling, one scan per component).

    python3 scripts/make-jpeg-fixtures.py   # from the repository root
"""
import io
import os
import subprocess
import tempfile

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests/data/jpeg")
SRC = os.path.join(ROOT, "../shared/golden/images/astronaut.png")


def crop(w, h, x=180, y=60):
    return Image.open(SRC).convert("RGB").crop((x, y, x + w, y + h))


def pillow(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def cjpeg(img, *args):
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.ppm" if img.mode == "RGB" else "in.pgm")
        img.save(src)
        return subprocess.run(["cjpeg", *args, src], check=True, capture_output=True).stdout


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        scans = os.path.join(d, "scans.txt")
        with open(scans, "w") as f:
            f.write("0;\n1;\n2;\n")
        # 16-bit quantisation entries (> 255) force libjpeg to write SOF1.
        q16 = [[1 + (i % 8) * 3 + (i // 8) * 40 for i in range(64)]] * 2
        cases = {
            "444": pillow(crop(37, 29), quality=90, subsampling=0),
            "422": pillow(crop(37, 29), quality=90, subsampling=1),
            "420": pillow(crop(37, 29), quality=90, subsampling=2),
            "420_big": pillow(crop(203, 141, 40, 20), quality=85, subsampling=2),
            "440": cjpeg(crop(37, 29), "-quality", "90", "-sample", "1x2,1x1,1x1"),
            "mixed_2x2_2x1_1x1": cjpeg(crop(37, 29), "-quality", "90", "-sample", "2x2,2x1,1x1"),
            "grey": pillow(crop(37, 29).convert("L"), quality=90),
            "420_restart_optimized": pillow(
                crop(45, 33), quality=80, subsampling=2, restart_marker_blocks=2, optimize=True
            ),
            "422_restart_rows": pillow(crop(45, 33), quality=80, subsampling=1, restart_marker_rows=1),
            "420_sof1_16bit_quant": pillow(crop(37, 29), qtables=q16, subsampling=2),
            "420_one_scan_per_component": cjpeg(crop(37, 29), "-quality", "90", "-sample", "2x2,1x1,1x1", "-scans", scans),
            "420_width3": pillow(crop(3, 5), quality=90, subsampling=2),
            "422_width4": pillow(crop(4, 3), quality=90, subsampling=1),
            "420_width5": pillow(crop(5, 9), quality=90, subsampling=2),
            "420_1x1": pillow(crop(1, 1), quality=90, subsampling=2),
        }
    # JPEGs npurt leaves to the `image` crate: progressive, and RGB-coded (Adobe transform 0).
    fallback = {
        "progressive": pillow(crop(37, 29), quality=90, progressive=True),
        "rgb_adobe": pillow(crop(37, 29), quality=90, keep_rgb=True),
    }
    os.makedirs(os.path.join(OUT, "fallback"), exist_ok=True)
    cases.update({"fallback/" + k: v for k, v in fallback.items()})
    for name, data in cases.items():
        with open(os.path.join(OUT, name + ".jpg"), "wb") as f:
            f.write(data)
        img = Image.open(io.BytesIO(data))
        img.convert("RGB").save(os.path.join(OUT, name + ".png"), optimize=True)
        print(name, img.size, img.mode, len(data), "bytes")


if __name__ == "__main__":
    main()
