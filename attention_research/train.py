"""The trainer: `train_and_evaluate(config, workdir)`, one flat function.

Read it top to bottom: validate the config, build the mesh, the data, the
model and the optimizer, restore or initialise the state, then loop (train
step, logs, evals, checkpoints) and write the result. In the style of
big_vision's train.py: no Trainer class, no callbacks; the state is a plain
dict; the names of tasks, models and attention variants are looked up in
their registries.

What lands in `workdir`:
  config.json        the config this run used
  metrics.jsonl      one JSON object per logged step (and one per eval)
  events.out.*       TensorBoard event files (written without TensorFlow)
  checkpoints/       orbax checkpoints: train state + data iterator + clock +
                     digests (checkpoints.py); checkpoints/corrupt/ holds any
                     that failed to read or verify
  result.json        on exit: status completed | diverged | preempted | failed,
                     final eval, parameter count, FLOPs per token, wall time, ...

A killed run resumes from its newest checkpoint that reads and verifies when
started again with the same workdir; on CPU it then ends with bit-identical
eval metrics (the data iterator, the step counter and hence every dropout key
are part of the checkpoint). SIGTERM or SIGINT (preemption.py) finishes the
current step, checkpoints it and records status "preempted": nothing is lost.
A run refused before training (a config error, a workdir that holds another
config's run) writes nothing; rerunning a completed run with the same config
returns its result untouched.
"""

import dataclasses
import datetime
import functools
import itertools
import json
import math
import os
import time
import traceback

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import tensorboardX

from attention_research import attention
from attention_research import checkpoints
from attention_research import data
from attention_research import models
from attention_research import preemption
from attention_research import sharding
from attention_research import storage

SCHEDULES = ("cosine", "rsqrt", "constant")
# Which models fit which task kind.
MODELS_FOR_KIND = {"classification": ("classifier",), "lm": ("decoder",),
                   "pair": ("dual_encoder",)}
# Fields a resumed run may change: they decide how long and how often, not
# what is trained.
RESUMABLE_CHANGES = ("total_steps", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "num_eval_batches", "data_dir", "scale", "mesh",
                     "context_parallel", "profile_steps")
CONTEXT_PARALLEL = ("ring", "all_gather")


def profile_window(config):
  """(first, last) train steps to trace from config.profile_steps "a,b", or None."""
  text = config.get("profile_steps")
  if text is None:
    return None
  parts = str(text).split(",")
  try:
    first, last = (int(part) for part in parts)
  except ValueError:
    first = last = None
  if first is None or not 1 <= first <= last <= config.total_steps:
    raise ValueError(f"config.profile_steps={text!r}: allowed: 'a,b', two train steps with "
                     f"1 <= a <= b <= total_steps={config.total_steps}")
  return first, last


def _stop_profile(state, workdir, window):
  """Ends the trace once the traced steps' device work is done; False (not profiling)."""
  jax.block_until_ready(state)
  jax.profiler.stop_trace()
  logging.info("wrote the XProf trace of steps %d to %d under %s/plugins/profile", *window,
               workdir)
  return False


def validate_config(config, num_devices):
  """Every config error as a ValueError naming the field, before any compile.

  Returns the models' resolved `Settings`.
  """
  if config.task not in data.names():
    raise ValueError(f"config.task: unknown task {config.task!r}; allowed: {data.names()}")
  data.vocab_size(config.task, config.task_options.to_dict())  # validates task_options
  longest = data.sequence_length(config.task, config.task_options.to_dict())
  if not isinstance(config.max_len, int) or config.max_len < longest:
    # The pipeline would cut every longer example: for an LM task that drops
    # answer tokens, for a classifier the evidence; never silently.
    raise ValueError(f"config.max_len={config.max_len!r} is shorter than task {config.task!r}'s "
                     f"examples ({longest} tokens with these task_options); allowed: an "
                     f"integer >= {longest}")
  settings = models.resolve(config)
  kind = data.get_task(config.task).kind
  allowed_models = MODELS_FOR_KIND[kind]
  if config.model not in allowed_models:
    raise ValueError(f"config.model={config.model!r} cannot train on task {config.task!r} "
                     f"({kind}); allowed: {list(allowed_models)}")
  if kind == "pair" and config.mesh.context not in (1,):
    # Its rows hold two sequences: the context axis would split the pair, not the sequence.
    raise ValueError(f"config.mesh.context={config.mesh.context}: task {config.task!r} holds "
                     f"two sequences a row (the dual encoder); allowed: 1")
  profile_window(config)
  if config.schedule not in SCHEDULES:
    raise ValueError(f"config.schedule: unknown schedule {config.schedule!r}; "
                     f"allowed: {list(SCHEDULES)}")
  for field in ("total_steps", "batch_size", "eval_every", "checkpoint_every", "log_every",
                "keep_checkpoints"):
    if not isinstance(config[field], int) or config[field] < 1:
      raise ValueError(f"config.{field} must be a positive integer, got {config[field]!r}")
  for field in ("learning_rate", "warmup_steps", "weight_decay", "grad_clip"):
    if config[field] is not None and not config[field] >= 0:
      raise ValueError(f"config.{field} must be >= 0 (grad_clip: 0 or None turns clipping "
                       f"off), got {config[field]!r}")
  shape = sharding.mesh_shape(config.mesh, num_devices)
  sharding.check_divides(shape, batch_size=config.batch_size, num_heads=settings.num_heads,
                         max_len=config.max_len)
  if config.context_parallel not in CONTEXT_PARALLEL:
    raise ValueError(f"config.context_parallel: unknown strategy {config.context_parallel!r}; "
                     f"allowed: {list(CONTEXT_PARALLEL)}")
  strategies = sorted(attention.variant(settings.attention).context)
  if shape["context"] > 1 and config.context_parallel not in strategies:
    raise ValueError(f"config.context_parallel={config.context_parallel!r}: attention "
                     f"{settings.attention!r} has no such context-parallel strategy; allowed "
                     f"with mesh.context={shape['context']}: {strategies}")
  if shape["context"] > 1:  # what only the split attention knows: whole blocks, GQA, masks
    options = dict(settings.attention_options)
    if settings.pos == "alibi":
      options["alibi_slopes"] = np.ones(settings.num_heads, np.float32)
    try:
      attention.check_context_parallel(
          settings.attention, config.context_parallel, shape,
          length=models.encoded_length(settings.model, settings.pooling, config.max_len),
          heads=settings.num_heads, kv_heads=settings.num_kv_heads, head_dim=settings.head_dim,
          causal=settings.model == "decoder", options=options)
    except ValueError as e:
      raise ValueError(f"config.mesh.context={shape['context']}: {e}") from None
  if config.num_eval_batches is not None and config.num_eval_batches < 1:
    raise ValueError(f"config.num_eval_batches must be None (the whole split) or a positive "
                     f"integer, got {config.num_eval_batches!r}")
  return settings


def new_state(model, optimizer, key, inputs, input_mask):
  """The train state at step 0: parameters, optimizer state, step."""
  params = model.init(key, inputs, input_mask, train=False)["params"]
  return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def learning_rate_schedule(config):
  """Linear warmup to config.learning_rate, then cosine to 0, rsqrt, or constant."""
  peak, warmup, total = config.learning_rate, config.warmup_steps, config.total_steps
  warm = lambda step: peak * jnp.minimum(1.0, (step + 1) / max(warmup, 1))
  if config.schedule == "cosine":
    def decay(step):
      progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
      return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  elif config.schedule == "rsqrt":
    decay = lambda step: jnp.sqrt(max(warmup, 1) / jnp.maximum(step + 1, max(warmup, 1)))
  else:
    decay = lambda step: 1.0
  return lambda step: warm(step) * decay(step)


def make_optimizer(config, schedule):
  """AdamW with global-norm clipping; decay only on matrices (not biases, norms)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip) if config.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                  weight_decay=config.weight_decay, mask=decay_mask))


def loss_and_metrics(logits, batch, kind):
  """Summed cross-entropy, correct predictions and count over real targets."""
  if kind in ("classification", "pair"):
    weights = batch["example_mask"].astype(jnp.float32)
  else:
    weights = (batch["target_mask"] & batch["example_mask"][:, None]).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  return {"loss": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights),
          "count": jnp.sum(weights)}


def _write_json(path, obj):
  storage.write_json(path, obj, indent=2, sort_keys=True)  # never a half-written result


def _truncate_metrics(path, last_step):
  """Drops what a killed run logged past its last checkpoint (it comes again).

  That includes a final eval and a line cut short by the kill; the file is
  replaced atomically, so a kill here loses nothing either.
  """
  if not storage.path(path).exists():
    return
  kept = []
  for line in storage.path(path).read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record["step"] <= last_step and not record.get("final"):
      kept.append(json.dumps(record) + "\n")
  storage.write_text(path, "".join(kept))


def _first_non_finite(fetched, step):
  """The step of the first non-finite loss among `fetched` (the steps up to `step`), logged
  as the divergence; None if every loss is finite."""
  bad = [i for i, m in enumerate(fetched) if not math.isfinite(float(m["loss"]))]
  if not bad:
    return None
  diverged_step = step - len(fetched) + bad[0] + 1
  logging.error("loss is %s at step %d: stopping (diverged)", fetched[bad[0]]["loss"],
                diverged_step)
  return diverged_step


def config_changes(config, saved_path, ignore=()):
  """Fields (outside `ignore`) where `config` differs from the saved config.json."""
  try:
    saved = storage.read_json(saved_path)
  except FileNotFoundError:
    return []
  current = json.loads(config.to_json_best_effort())
  return sorted(k for k in set(saved) | set(current)
                if k not in ignore and saved.get(k) != current.get(k))


def read_result(workdir):
  """The workdir's result.json as a dict, or None if there is none."""
  try:  # not exists-then-open: a sweep may move an attempt aside in between
    return storage.read_json(os.path.join(workdir, "result.json"))
  except FileNotFoundError:
    return None


def latest_checkpoint_step(workdir):
  """The step of the workdir's newest complete checkpoint, 0 if none (orbax names each
  finished one by its step; temporary and corrupt ones have other names)."""
  names = storage.listdir(os.path.join(workdir, "checkpoints"))
  return max((int(n) for n in names if n.isdigit()), default=0)


def check_workdir(config, workdir):
  """A run is resumed or rerun only under the config that wrote it (ValueError otherwise).

  Only RESUMABLE_CHANGES may differ. A workdir without a checkpoint or a
  result (a fresh one, or one whose run failed before its first checkpoint)
  takes any config.
  """
  previous = read_result(workdir)
  if not latest_checkpoint_step(workdir) and (previous is None or previous["status"] == "failed"):
    return
  saved_path = os.path.join(workdir, "config.json")
  changed = config_changes(config, saved_path, RESUMABLE_CHANGES)
  if changed:
    raise ValueError(
        f"the workdir holds a run with a different config: fields {changed} differ from "
        f"{saved_path}; use a new --workdir (only {list(RESUMABLE_CHANGES)} may change when "
        f"resuming)")


def train_and_evaluate(config, workdir):
  """Trains and evaluates the model `config` describes; returns result.json's dict.

  A failure once training has begun is recorded in result.json (status
  "failed", the error and its traceback) and re-raised. A failure before, in
  a workdir that already holds a result.json, leaves that result as it is.
  """
  start_time = time.time()
  # Refusals first: they write nothing, so a fresh workdir is never created
  # and a finished result is never overwritten by one.
  settings = validate_config(config, len(jax.devices()))
  check_workdir(config, workdir)
  previous = read_result(workdir)
  if (previous is not None and previous["status"] == "completed"
      and not config_changes(config, os.path.join(workdir, "config.json"))):
    logging.info("%s holds a completed run of this config: its result is kept", workdir)
    return previous
  storage.path(workdir).mkdir(parents=True, exist_ok=True)
  result_path = os.path.join(workdir, "result.json")
  is_main = jax.process_index() == 0
  result = {"status": "failed", "workdir": workdir}
  life = {"training": False}  # set once the loop starts
  try:
    with preemption.watch():  # a signal from here on is noted, not fatal
      result = _train(config, settings, workdir, start_time, result, life)
  except Exception as e:  # recorded, then re-raised: a failed trial is never lost
    result.update(status="failed", error=f"{type(e).__name__}: {e}",
                  traceback=traceback.format_exc(), wall_time_s=time.time() - start_time)
    if is_main and (life["training"] or previous is None):
      _write_json(result_path, result)
    raise
  if is_main:
    _write_json(result_path, result)
  return result


def _speeds(metrics_path, own):
  """Steps/s of every logged window of the run so far (metrics.jsonl holds the earlier
  lives' windows, on process 0); `own`, this life's, where there is no such file."""
  if not storage.path(metrics_path).exists():
    return own
  records = [json.loads(line) for line in storage.path(metrics_path).read_text().splitlines()
             if line.strip()]
  return [r["steps_per_s"] for r in records if "steps_per_s" in r]


def _train(config, settings, workdir, start_time, result, life):
  # ---------------------------------------------------------------- config
  # Validated by the caller, before any file was written.
  devices = jax.devices()
  task = data.get_task(config.task)
  task_options = config.task_options.to_dict()
  vocab_size = data.vocab_size(config.task, task_options)
  num_classes = data.num_classes(config.task, task_options)
  is_main = jax.process_index() == 0
  config_path = os.path.join(workdir, "config.json")
  # A sparse pattern that reaches every key at this length is dense attention
  # paid at a sparse variant's overhead: legal, but never silently.
  seen = models.encoded_length(settings.model, settings.pooling, config.max_len)
  if attention.covers_every_key(settings.attention, seen, causal=settings.model == "decoder",
                                options=dict(settings.attention_options)):
    note = (f"attention {settings.attention!r} with options {dict(settings.attention_options)} "
            f"attends to every key at length {seen}: this run computes dense attention; "
            f"shorten the pattern's reach (config.attention_options) to make it sparse")
    logging.warning("%s", note)
    result["warnings"] = [note]

  # ------------------------------------------------------------------ mesh
  # Four axes (data, fsdp, tensor, context) over every device of every
  # process, sized by config.mesh; sharding.py's rules say what each splits.
  mesh = sharding.make_mesh(sharding.mesh_shape(config.mesh, len(devices)), devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = sharding.batch_sharding(mesh)
  # This process loads the rows of each global batch its devices hold.
  load_index, load_count = sharding.batch_loading(batch_sharding, config.batch_size)
  logging.info("mesh: %s over %d devices, %d processes", sharding.describe(mesh), len(devices),
               jax.process_count())
  # The model constrains its activations to the mesh; attention splits the
  # sequence when the context axis does.
  settings = dataclasses.replace(settings, mesh=mesh)
  if mesh.shape["context"] > 1:
    settings = dataclasses.replace(settings, context_parallel=config.context_parallel)
    logging.info("context parallelism: %s attention, %s", config.context_parallel,
                 settings.attention)

  # ------------------------------------------------------------------ data
  data_dir = os.fspath(storage.path(config.data_dir)) if config.data_dir else None  # ~ expanded
  # Process 0 generates the data on first use; the others then open it, so
  # hosts sharing a data_dir do not race to write it.
  if is_main:
    data.prepare(config.task, task_options, data_dir)
  multihost_utils.sync_global_devices("data prepared")
  train_iter = data.train_iterator(config.task, task_options, data_dir=data_dir,
                                   global_batch_size=config.batch_size, max_len=config.max_len,
                                   seed=config.seed, process_index=load_index,
                                   process_count=load_count)

  eval_split = data.eval_batches(config.task, task_options, data_dir=data_dir,
                                 global_batch_size=config.batch_size, max_len=config.max_len,
                                 process_index=load_index, process_count=load_count)
  eval_batches = lambda: itertools.islice(eval_split, config.num_eval_batches)

  def to_global(batch):  # each process holds its rows of the global batch
    return {k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in batch.items()}

  # ------------------------------------------------------- model, optimizer
  model = models.build(settings, vocab_size=vocab_size, num_classes=num_classes)
  schedule = learning_rate_schedule(config)
  optimizer = make_optimizer(config, schedule)
  root_key = jax.random.key(config.seed)
  init_key, dropout_root = jax.random.split(root_key)
  example = next(iter(eval_batches()))

  init_state = functools.partial(new_state, model, optimizer, init_key,
                                 jnp.asarray(example["inputs"]), jnp.asarray(example["input_mask"]))

  abstract_state = jax.eval_shape(init_state)
  state_sharding = sharding.state_shardings(abstract_state, mesh)
  result.update(mesh=dict(mesh.shape), state_bytes_per_device=sharding.per_device_bytes(
      abstract_state, state_sharding))
  logging.info("train state: %.4g MB per device (parameters and optimizer state)",
               result["state_bytes_per_device"] / 1e6)
  num_params = models.num_params(abstract_state["params"])
  flops_per_token = models.flops_per_token(settings, config.max_len, vocab_size=vocab_size,
                                           num_classes=num_classes)
  result.update(num_params=num_params, flops_per_token=flops_per_token,
                num_block_params=models.num_block_params(abstract_state["params"]))
  logging.info("model %s, attention %s: %d parameters, %.3g forward FLOPs per token",
               config.model, config.attention, num_params, flops_per_token)

  # ----------------------------------------------------------- update step
  @functools.partial(jax.jit, donate_argnums=0, out_shardings=(state_sharding, replicated))
  def train_step(state, batch):
    batch = sharding.constrain_batch(batch, mesh)
    dropout_key = jax.random.fold_in(dropout_root, state["step"])

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["inputs"], batch["input_mask"],
                           train=True, rngs={"dropout": dropout_key})
      sums = loss_and_metrics(logits, batch, task.kind)
      return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": sums["loss"] / jnp.maximum(sums["count"], 1.0),
               "accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
               "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state["step"])}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  @functools.partial(jax.jit, out_shardings=replicated)
  def eval_step(params, batch):
    batch = sharding.constrain_batch(batch, mesh)
    logits = model.apply({"params": params}, batch["inputs"], batch["input_mask"], train=False)
    return loss_and_metrics(logits, batch, task.kind)

  def evaluate(params):
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch in eval_batches():
      sums = jax.device_get(eval_step(params, to_global(batch)))
      for k in totals:
        totals[k] += float(sums[k])
    count = max(totals["count"], 1.0)
    metrics = {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count,
               "num_targets": int(totals["count"])}
    if task.kind == "lm":  # per target token, as LM papers report it (Vaswani et al. Table 3)
      metrics["perplexity"] = math.exp(min(metrics["loss"], 700.0))
      # Bits per byte on a byte-level task (the loss is in nats).
      metrics["bits_per_token"] = metrics["loss"] / math.log(2.0)
    return metrics

  # ------------------------------------------------------------ checkpoint
  # Restore the newest checkpoint that reads and matches its digests; any
  # that does not is moved to checkpoints/corrupt/ and an older one tried.
  manager = checkpoints.open_manager(os.path.join(workdir, "checkpoints"),
                                     config.keep_checkpoints)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  previous_wall_time = 0.0
  pending = []  # device metrics since the last log; fetched together
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, state_sharding)
  found = checkpoints.restore_latest(manager, abstract)
  if found is not None:
    restored_step, state, progress = found
    train_iter.set_state(progress["data_iterator"])
    previous_wall_time = progress["wall_time_s"]
    # A pre-empted run saved mid-window: its steps' metrics join the window
    # again, so the resumed run logs what an uninterrupted one would.
    pending = [{k: np.float32(v) for k, v in m.items()}
               for m in progress.get("pending_metrics", [])]
    logging.info("resumed from the checkpoint at step %d", restored_step)
  else:
    logged = storage.path(metrics_path)
    if logged.exists() and logged.stat().length:  # never silently
      logging.warning("%s holds the records of an earlier run but no checkpoint to resume: "
                      "starting over from step 0", workdir)
    state = jax.jit(init_state, out_shardings=state_sharding)()
  first_step = int(state["step"])
  if is_main:
    _write_json(config_path, json.loads(config.to_json_best_effort()))
    _truncate_metrics(metrics_path, first_step)

  # Compile ahead of time: the same executable then runs every step, and its
  # temporary memory is a figure sweeps over sequence length report.
  train_step = train_step.lower(state, to_global(example)).compile()
  step_memory = train_step.memory_analysis()
  result.update(train_step_temp_bytes=getattr(step_memory, "temp_size_in_bytes", None))
  # Out of memory is a one-line error now, not a crash after the first step.
  needed = sharding.step_bytes(step_memory)
  limit = sharding.device_memory_bytes(jax.local_devices()[0])
  if step_memory is not None and limit is not None and needed > limit:
    raise MemoryError(
        f"the train step needs {needed / 2**30:.3g} GiB per device "
        f"({result['state_bytes_per_device'] / 2**30:.3g} GiB of parameters and optimizer "
        f"state), but a {jax.local_devices()[0].platform} device has {limit / 2**30:.3g} GiB, on the mesh "
        f"{sharding.describe(mesh)}; more devices on mesh.fsdp split the parameters and "
        f"optimizer state, mesh.tensor the heads and MLP; a smaller batch_size or max_len "
        f"shrinks the activations")

  def save_checkpoint(step, unlogged):
    checkpoints.save(manager, step, state, {
        "data_iterator": train_iter.get_state(),
        "wall_time_s": previous_wall_time + time.time() - start_time,
        "pending_metrics": [{k: float(v) for k, v in m.items()} for m in unlogged]})

  # ------------------------------------------------------------------ loop
  # purge_step hides the events a killed run wrote past its last checkpoint.
  writer = tensorboardX.SummaryWriter(workdir, purge_step=first_step + 1) if is_main else None
  metrics_file = storage.open_append(metrics_path) if is_main else None

  def log(step, record, prefix):
    if not is_main:
      return
    metrics_file.write(json.dumps({"step": step, **record}) + "\n")
    metrics_file.flush()
    for name, value in record.items():
      is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
      if is_number and math.isfinite(value):  # eval_loss is tagged eval/loss, not eval/eval_loss
        writer.add_scalar(f"{prefix}/{name.removeprefix(prefix + '_')}", value, step)
    writer.flush()

  # Positions the model processes per step, padding included (what the
  # hardware does; a dual encoder reads two sequences per example).
  tokens_per_step = example["inputs"].size // len(example["example_mask"]) * config.batch_size
  speeds = []   # steps/s of each log window, for the result's median
  last_log_time, last_log_step = time.time(), first_step
  diverged_step = None
  # A signal noted while preparing stops before the first step: the newest
  # checkpoint already holds this one.
  preempted_step = first_step if preemption.requested(synced=True, step=first_step) else None
  last_step = config.total_steps if preempted_step is None else first_step
  life["training"] = True
  logging.info("training from step %d to %d", first_step, last_step)
  # Every process traces its own host's devices; a resumed run traces what is
  # left of the window.
  profile = profile_window(config)
  profiling = False
  for step in range(first_step + 1, last_step + 1):
    if profile and step == max(profile[0], first_step + 1) and step <= profile[1]:
      jax.profiler.start_trace(workdir)
      profiling = True
    state, metrics = train_step(state, to_global(next(train_iter)))
    pending.append(metrics)
    if profiling and step == profile[1]:
      profiling = _stop_profile(state, workdir, profile)

    checkpoint_due = step % config.checkpoint_every == 0 or step == config.total_steps
    log_due = step % config.log_every == 0 or checkpoint_due
    # Every step before a checkpoint is checked for NaN (a diverged state is
    # never saved); a scheduled checkpoint always follows a log, so resumed
    # runs log the same windows.
    if log_due:
      fetched = jax.device_get(pending)
      diverged_step = _first_non_finite(fetched, step)
      if diverged_step is not None:
        break
      now = time.time()
      steps_per_s = (step - last_log_step) / max(now - last_log_time, 1e-9)
      record = {k: float(np.mean([m[k] for m in fetched])) for k in ("loss", "accuracy")}
      record.update(grad_norm=float(fetched[-1]["grad_norm"]),
                    learning_rate=float(fetched[-1]["learning_rate"]),
                    steps_per_s=steps_per_s, tokens_per_s=steps_per_s * tokens_per_step)
      log(step, record, "train")
      speeds.append(steps_per_s)
      eta = (config.total_steps - step) / max(steps_per_s, 1e-9)
      logging.info("step %d/%d: loss %.4f, acc %.4f, %.2f steps/s, %.0f tokens/s, ETA %s",
                   step, config.total_steps, record["loss"], record["accuracy"], steps_per_s,
                   record["tokens_per_s"], datetime.timedelta(seconds=round(eta)))
      pending, last_log_time, last_log_step = [], now, step

    if step % config.eval_every == 0 and step != config.total_steps:
      eval_metrics = evaluate(state["params"])
      log(step, {f"eval_{k}": v for k, v in eval_metrics.items()}, "eval")
      logging.info("step %d eval: loss %.4f, accuracy %.4f", step, eval_metrics["loss"],
                   eval_metrics["accuracy"])
      last_log_time = time.time()  # evals do not count against steps/s

    preempted = preemption.requested(synced=log_due, step=step)
    if preempted and pending:  # mid-window: checked for NaN, then carried in the checkpoint
      pending = jax.device_get(pending)
      diverged_step = _first_non_finite(pending, step)
      if diverged_step is not None:
        break
    if checkpoint_due or preempted:
      save_checkpoint(step, pending)
      last_log_time = time.time()
    if preempted:
      preempted_step = step
      logging.warning("pre-empted: stopped after the checkpoint of step %d; run the same "
                      "command again to resume there", step)
      break

  # ----------------------------------------------------------------- final
  if profiling:  # the loop ended inside the window (pre-empted, diverged)
    _stop_profile(state, workdir, profile)
  wall_time = previous_wall_time + time.time() - start_time
  # Every logged window of the run, earlier lives' too (a resumed or rerun run
  # keeps its numbers); the first window of each life includes its warm-up,
  # and the median shrugs that off.
  speeds = _speeds(metrics_path, speeds) if is_main else speeds
  median_speed = float(np.median(speeds)) if speeds else None
  result.update(train_steps_per_s=median_speed,
                train_step_time_s=median_speed and 1.0 / median_speed,
                train_tokens_per_s=median_speed and median_speed * tokens_per_step,
                num_devices=len(devices), resumed_from_step=first_step or None)
  if diverged_step is not None:
    result.update(status="diverged", diverged_step=diverged_step, wall_time_s=wall_time,
                  final_eval=None, error=f"non-finite loss at step {diverged_step}")
  elif preempted_step is not None:
    result.update(status="preempted", step=preempted_step, wall_time_s=wall_time,
                  final_eval=None, error=f"pre-empted after the checkpoint of step "
                  f"{preempted_step}; rerun to resume")
  else:
    final_eval = evaluate(state["params"])
    log(config.total_steps, {f"eval_{k}": v for k, v in final_eval.items()} | {"final": True},
        "eval")
    logging.info("final eval: loss %.4f, accuracy %.4f", final_eval["loss"],
                 final_eval["accuracy"])
    result.update(status="completed", final_eval=final_eval, steps=config.total_steps,
                  wall_time_s=wall_time)
  manager.close()
  if is_main:
    metrics_file.close()
    writer.close()
  return result
