"""attention-research: attention mechanisms and experiments in JAX/Flax.

`install_requires` states the lower bounds: the oldest release of each direct
dependency the suite passes with (`.ci/lower_bounds` installs exactly these
and runs it). `requirements.lock` pins the current releases CI installs.
"""

from setuptools import find_packages, setup

setup(
    name="attention_research",
    version="0.1.0",
    description="Dense, blockwise, sparse and linear attention in JAX/Flax, with "
                "experiment binaries for ablations and paper tables.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["attention_research", "attention_research.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "array-record>=0.8.6",
        "grain>=0.2.18",
        "ml-collections>=1.1.0",
        "absl-py>=2.5.1",
        "chex>=0.1.92",
        "matplotlib>=3.11.2",
        "tensorboardX>=2.6.5",
        "numpy>=2.4.6",
    ],
    extras_require={
        # gs:// workdirs (storage.py): epath reaches GCS through gcsfs, which
        # brings some 28 packages; tpu_setup/install asks for it, and the tests
        # run a sweep on a fake GCS.
        "gcs": ["gcsfs>=2026.10.1"],
        # importlib_resources: TFDS's own builders need it to write a dataset,
        # which the tests do for small fixtures of the datasets LRA reads.
        "test": ["pytest>=9.2.0", "pytest-xdist>=3.8.0", "gcsfs>=2026.10.1",
                 "importlib_resources>=7.1.0"],
        # To look at the event files: tensorboard --logdir <workdir>.
        "tensorboard": ["tensorboard>=2.21.0"],
    },
)
