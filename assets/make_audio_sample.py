"""Makes assets/speech.flac, the short spoken clip the README and demo use: espeak-ng speaks a
sentence, sox converts it to 16 kHz mono 16-bit FLAC. Needs espeak-ng and sox
(apt-get install espeak-ng sox). Run from the repository root: python assets/make_audio_sample.py"""
from __future__ import annotations

import os
import subprocess
import tempfile

TEXT = "Gemma three n can listen to this short note."
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "speech.flac")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", wav, TEXT], check=True)
        subprocess.run(["sox", wav, "-r", "16000", "-c", "1", "-b", "16", OUT], check=True)
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
