"""attention-research: attention mechanisms and experiments in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="attention_research",
    version="0.1.0",
    description="Dense, blockwise, sparse and linear attention in JAX/Flax, with "
                "experiment binaries for ablations and paper tables.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["attention_research", "attention_research.*"]),
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8.0",
        "grain>=0.2.12",
        "ml-collections>=1.1.0",
        "absl-py>=2.1.0",
        "chex>=0.1.90",
        "matplotlib>=3.9",
        "tensorboardX>=2.6",
        "numpy>=1.26",
    ],
    extras_require={"test": ["pytest>=8.0", "pytest-xdist>=3.6"]},
)
