r"""Does DHP's training forward pass read the batch's labels? A probe of trained rows.

  python experiments/label_leak.py --table_dir=results/vision_mixture_medium \
      --rows=dhp,dhp+si,dhp_frozen_alpha

The training forward pass updates the Hebb trace with the batch's class means and then
computes the logits with the *updated* trace (SPEC §1, step 2), so a sample's own
activation, via its label's column, reaches its logits. For each row's last committed
state and each seed, over ``--num_images`` training images of the last task the row
finished (a fixed draw, in batches of the training batch size, the trace carried from
batch to batch as in training), this measures:

* ``train``: the training pass's accuracy against the true labels;
* ``eval``: the evaluation pass's accuracy on the same images with the trace carried
  into the batch (what the network predicts without the batch's labels);
* ``follows_wrong``: the training pass given wrong labels (each moved one class on
  within the task): how often it predicts the label it was given.

A head whose training pass reads the labels has ``train`` far above ``eval`` and a high
``follows_wrong``; with α = 0 the two passes agree. Writes ``label_leak.json`` and
``label_leak.md`` into ``--table_dir``.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

if __package__ in (None, ""):   # run as a script: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhp_jax import config as config_lib, engine, ops, seeds, store, streams
from experiments import cli
from experiments.rows import ROWS

MEASURES = ("train", "eval", "follows_wrong")


def wrong_labels(labels: jax.Array, output_slice: Optional[tuple]) -> jax.Array:
  """Each global label moved one class on, cyclically within the task's outputs."""
  start, stop = output_slice if output_slice is not None else (0, 10)
  return start + (labels - start + 1) % (stop - start)


@functools.partial(jax.jit, static_argnames=("model", "output_slice"))
def probe(params, hebb, x, labels, *, model, output_slice=None) -> dict:
  """One seed's ``MEASURES`` (fractions) over batches ``x`` [nb, B, ...], global
  ``labels`` [nb, B], starting from the trace ``hebb`` (a DHP head's; {} for none)."""
  start = 0 if output_slice is None else output_slice[0]

  def predict(hebb, x, given):
    variables = {"params": params, **({"hebb": hebb} if hebb else {})}
    if given is None or not hebb:
      return ops.restrict_logits(model.apply(variables, x), output_slice), hebb
    logits, mutated = model.apply(variables, x, given, mutable=["hebb"])
    return ops.restrict_logits(logits, output_slice), mutated["hebb"]

  def body(traces, batch):
    x, y = batch
    true_trace, wrong_trace = traces
    wrong = wrong_labels(y, output_slice)
    evaluated, _ = predict(true_trace, x, None)
    trained, true_trace = predict(true_trace, x, y)
    misled, wrong_trace = predict(wrong_trace, x, wrong)
    hits = lambda logits, target: jnp.mean(jnp.argmax(logits, -1) + start == target)
    return (true_trace, wrong_trace), jnp.stack(
        [hits(trained, y), hits(evaluated, y), hits(misled, wrong)])

  _, per_batch = jax.lax.scan(body, (hebb, hebb), (x, labels))
  return dict(zip(MEASURES, per_batch.mean(0)))


def probe_images(split: streams.Split, permutation, num_images: int, batch_size: int):
  """A fixed draw (seed 0) of ``num_images`` training images of ``split`` as batches:
  (x float32 [nb, B, ...], labels int32 [nb, B]); the remainder is dropped."""
  rows = np.random.default_rng(0).permutation(np.asarray(split.index))
  rows = rows[:num_images - num_images % batch_size].reshape(-1, batch_size)
  x, labels = streams.make_batch(split.images, split.labels, jnp.asarray(rows.ravel()),
                                 permutation)
  return x.reshape(*rows.shape, *x.shape[1:]), labels.reshape(rows.shape)


def row_leak(out_dir: str, num_images: int, data_dir=None) -> Optional[dict]:
  """{"task", "seeds": [{measure: fraction} or None (non-finite state)]} for the last
  committed state of the run in ``out_dir`` (None: nothing committed). ValueError, before
  any data is loaded, when that commit kept no state (e.g. a fresh clone's results)."""
  commit = store.latest_commit(out_dir)
  if commit is None:
    return None
  if commit.state_path is None:
    raise ValueError(f"--rows: {out_dir} holds results but no saved state (checkpoints "
                     "are not in git): train the row again (experiments/table1.py, same "
                     "flags) to probe it")
  run = engine.prepare(config_lib.Config.from_json(commit.results["config"]), data_dir)
  state = store.restore_state(out_dir, commit, run.programs.create(seeds.init_keys(run.keys)))
  t = commit.task - 1
  per_seed = []
  for s in range(run.config.num_seeds):
    params, hebb = jax.tree.map(lambda a: a[s], (state.params, state.hebb))
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params)):
      per_seed.append(None)
      continue
    perm = None if run.perms[t] is None else run.perms[t][s]
    x, labels = probe_images(run.train_splits[t], perm, num_images, run.config.batch_size)
    measures = probe(params, hebb, x, labels, model=run.programs.model,
                     output_slice=run.tasks[t].output_slice)
    per_seed.append({k: float(v) for k, v in measures.items()})
  return {"task": commit.task, "task_name": run.tasks[t].name, "seeds": per_seed}


def markdown(table_dir: str, leaks: Mapping[str, dict], num_images: int) -> str:
  lines = [f"# Does the training pass read the labels? — {os.path.basename(table_dir)}", "",
           f"Per seed, on {num_images} training images of the row's last finished task "
           "(a fixed draw, batches of the training size, the trace carried as in "
           "training): the training pass's accuracy (trace updated with the batch's "
           "labels, then the logits), the evaluation pass's on the same images (the "
           "trace carried into the batch, no labels), and how often the training pass "
           "given wrong labels (one class on) predicts the label it was given. "
           "`experiments/label_leak.py`.", "",
           "| row | task | seed | training pass % | evaluation pass % | follows wrong labels % |",
           "|---|---|---|---|---|---|"]
  for row, leak in leaks.items():
    for seed, m in enumerate(leak["seeds"]):
      cells = (["non-finite state"] * 3 if m is None
               else [f"{100 * m[k]:.1f}" for k in MEASURES])
      lines.append(f"| {ROWS[row].label if row in ROWS else row} | {leak['task']} "
                   f"({leak['task_name']}) | {seed} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def define_flags(fv: flags.FlagValues) -> None:
  cli.define_table_flags(fv, ["dhp", "dhp+si", "dhp_frozen_alpha"], "Rows to probe.")
  flags.DEFINE_integer("num_images", 3200, "Training images per seed.", lower_bound=1,
                       flag_values=fv)


def run(fv: flags.FlagValues) -> dict:
  leaks = {row: row_leak(folder, fv.num_images, cli.data_dirs(fv.data_dir))
           for row, folder in cli.table_row_dirs(fv).items()}
  leaks = {row: leak for row, leak in leaks.items() if leak is not None}
  cli.write_table_report(fv.table_dir, "label_leak",
                         {"num_images": fv.num_images, "rows": leaks},
                         markdown(fv.table_dir, leaks, fv.num_images))
  return leaks


if __name__ == "__main__":
  cli.main(run, define_flags)
