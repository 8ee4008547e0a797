"""The byte-level LM task on the Python stdlib's source: the split by file, the windows,
the corpus digest that records which stdlib was read, and a short training run.

A small stand-in stdlib directory (monkeypatched in) keeps the checks exact and
quick; one check reads this machine's real stdlib.
"""

import hashlib
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from attention_research import data
from attention_research.data import stdlib_bytes
from tests.test_train import ROOT
from tests.test_train import run_env

FILES = {  # path -> text; test/ and site-packages/ are left out of the corpus
    "abc.py": "class ABC:\n    pass\n" * 30,
    "os.py": "import sys\n" * 50,
    "json/__init__.py": "def dumps(x):\n    return repr(x)\n" * 20,
    "json/decoder.py": "# decoder\n" * 40,
    "email/parser.py": "PARSER = 1\n" * 60,
    "zipfile.py": "ZIP = 'zip'\n" * 45,
    "test/test_os.py": "TESTS = 1\n" * 10,
    "site-packages/pkg.py": "PKG = 1\n" * 10,
    "notes.txt": "not python\n",
}


@pytest.fixture
def fake_stdlib(tmp_path, monkeypatch):
  root = tmp_path / "lib"
  for path, text in FILES.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
  monkeypatch.setattr(stdlib_bytes, "stdlib_dir", lambda: str(root))
  return root


def expected_split(root, fraction):
  """{split: bytes}, built here: every corpus file by the SHA-256 of its path."""
  texts = {"train": b"", "test": b""}
  for path in sorted(p for p in FILES if p.endswith(".py") and
                     not p.startswith(("test/", "site-packages/"))):
    split = "test" if hashlib.sha256(path.encode()).digest()[0] < fraction * 256 else "train"
    texts[split] += (root / path).read_bytes() + b"\n"
  return texts


def options(**overrides):
  return data.resolve_options("stdlib_bytes", {"length": 16, "test_fraction": 0.5,
                                               "num_train": 8, "num_test": 4, **overrides})


def test_the_split_is_by_file_and_the_windows_are_the_split_s_bytes(fake_stdlib):
  opts = options()
  assert stdlib_bytes.corpus_files(str(fake_stdlib)) == (
      "abc.py", "email/parser.py", "json/__init__.py", "json/decoder.py", "os.py",
      "zipfile.py")
  texts = expected_split(fake_stdlib, 0.5)
  assert texts["train"] and texts["test"]  # this fixture's paths fall on both sides
  stride = (len(texts["test"]) - 17) // 3   # 4 windows spread over the whole test text
  assert stride >= 17
  for i in range(4):
    example = stdlib_bytes.generate(opts, "test", i)
    window = texts["test"][stride * i:stride * i + 17]
    np.testing.assert_array_equal(example["inputs"], np.frombuffer(window[:16], np.uint8) + 1)
    np.testing.assert_array_equal(example["targets"], np.frombuffer(window[1:], np.uint8) + 1)
    assert example["target_mask"].all()
  for i in range(8):  # train windows: somewhere in the train text, never in the test text
    example = stdlib_bytes.generate(opts, "train", i)
    window = bytes((np.append(example["inputs"], example["targets"][-1]) - 1).astype(np.uint8))
    assert window in texts["train"] and window not in texts["test"]
  # Deterministic given the seed; another seed draws other windows.
  again = stdlib_bytes.generate(opts, "train", 5)
  np.testing.assert_array_equal(again["inputs"], stdlib_bytes.generate(opts, "train", 5)["inputs"])
  other = [stdlib_bytes.generate(options(seed=1), "train", i)["inputs"] for i in range(8)]
  assert any((o != stdlib_bytes.generate(opts, "train", i)["inputs"]).any()
             for i, o in enumerate(other))


def test_options_record_the_interpreter_and_the_corpus(fake_stdlib):
  opts = options()
  digest = hashlib.sha256()
  for path in stdlib_bytes.corpus_files(str(fake_stdlib)):
    digest.update(path.encode() + b"\0" + (fake_stdlib / path).read_bytes() + b"\0")
  assert opts["corpus"] == digest.hexdigest()[:16]
  assert opts["python_version"] == platform.python_version()
  assert options(corpus=opts["corpus"]) == opts   # stated explicitly: the same dataset
  with pytest.raises(ValueError, match=r"stdlib_bytes: options ask for the stdlib of Python "
                                       r"2\.7\.18 .* this machine has Python"):
    options(python_version="2.7.18")
  with pytest.raises(ValueError, match=r"\(corpus 0123456789abcdef\); this machine has"):
    options(corpus="0123456789abcdef")
  with pytest.raises(ValueError, match=r"option `num_test` must be <= \d+"):
    options(num_test=10_000)
  with pytest.raises(ValueError, match=r"option `test_fraction` must be in \(0, 1\)"):
    options(test_fraction=1.0)


def test_this_machine_s_stdlib_is_a_corpus_of_megabytes():
  import sysconfig
  opts = data.resolve_options("stdlib_bytes", {})
  root = sysconfig.get_paths()["stdlib"]
  digest, size = hashlib.sha256(), 0
  excluded = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
  paths = []  # the corpus, walked here
  for directory, _, files in os.walk(root):
    if not set(os.path.relpath(directory, root).split(os.sep)) & excluded:
      paths += [os.path.relpath(os.path.join(directory, f), root) for f in files
                if f.endswith(".py")]
  paths.sort()
  for path in paths:
    content = open(os.path.join(root, path), "rb").read()
    digest.update(path.encode() + b"\0" + content + b"\0")
    size += len(content)
  assert opts["corpus"] == digest.hexdigest()[:16] and size > 1_000_000
  # The task config records this machine's stdlib in the run's config.
  from configs.tasks import stdlib_bytes as config_file
  options = config_file.get_config("scale=cpu").task_options
  assert (options.python_version, options.corpus) == (platform.python_version(), opts["corpus"])


def test_the_trainer_reports_bits_per_byte(tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "experiments.train",
             "--config=configs/tasks/stdlib_bytes.py:scale=cpu", f"--workdir={workdir}",
             f"--config.data_dir={tmp_path / 'data'}", "--config.total_steps=4",
             "--config.log_every=2", "--config.eval_every=4", "--config.checkpoint_every=4",
             "--config.batch_size=2", "--config.num_layers=1", "--config.d_model=16",
             "--config.task_options.num_train=8", "--config.task_options.num_test=4",
             f"--jax_cache_dir={os.path.join(ROOT, 'tests', '.jax_cache')}"]
  done = subprocess.run(command, cwd=ROOT, env=run_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  final = json.load(open(workdir / "result.json"))["final_eval"]
  assert final["num_targets"] == 4 * 256
  assert final["bits_per_token"] == pytest.approx(final["loss"] / np.log(2))
  assert 4 < final["bits_per_token"] < 9   # near uniform over 257 tokens (8.0 bits) at step 4
