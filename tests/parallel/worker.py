"""One process of the multi-process tests: `python -m tests.parallel.worker SCENARIO OUTDIR`, started by
`processes.ProcessGroup` (2 processes x 4 CPU devices). A failed check exits non-zero, which fails the test."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.multihost_utils import process_allgather
from jax.sharding import NamedSharding, PartitionSpec as P

from orca_jax.parallel import (
    PreemptionGuard,
    batch_from_process_rows,
    init_optimizer,
    initialize_distributed,
    is_main_process,
    make_mesh,
    place,
    process_rows,
    replicated,
)
from tests.parallel.shards import born_sharded, bytes_per_device


def mlp_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w1": jax.random.normal(k1, (8, 16)) / 3, "b1": jnp.zeros(16), "w2": jax.random.normal(k2, (16, 4)) / 4}


def loss(params, x, y):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] - y) ** 2)


def sharded(out: Path) -> None:
    """Parameters born sharded over both processes' devices, a train step fed by per-process batch rows, checked
    against the same steps on one local device."""
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
    assert is_main_process() == (jax.process_index() == 0)
    mesh = make_mesh(data=2, fsdp=4)
    optimizer = optax.adamw(1e-2, weight_decay=0.1)
    params, shardings = born_sharded(mlp_params, mesh, min_shard_bytes=0)
    opt_state, opt_shardings = init_optimizer(optimizer, params, shardings)
    total_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    assert set(bytes_per_device(params).values()) == {total_bytes // 4}, bytes_per_device(params)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 16, 8)).astype(np.float32), rng.normal(size=(3, 16, 4)).astype(np.float32)

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    batch = NamedSharding(mesh, P(("data", "fsdp")))
    sharded_step = jax.jit(step, in_shardings=(shardings, opt_shardings, batch, batch),
                           out_shardings=(shardings, opt_shardings, replicated(mesh)))
    rows = process_rows(16)
    losses = []
    for i in range(3):
        params, opt_state, value = sharded_step(params, opt_state, batch_from_process_rows(x[i][rows], mesh),
                                                batch_from_process_rows(y[i][rows], mesh))
        losses.append(float(value))

    with jax.default_device(jax.local_devices()[0]):
        ref_params = mlp_params()
        ref_state, ref_losses = optimizer.init(ref_params), []
        for i in range(3):
            ref_params, ref_state, value = jax.jit(step)(ref_params, ref_state, x[i], y[i])
            ref_losses.append(float(value))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, value in process_allgather(params, tiled=True).items():
        np.testing.assert_allclose(value, ref_params[name], rtol=1e-5, atol=1e-6, err_msg=name)

    # Each process contributes its own value; everyone receives all of them.
    gathered = process_allgather(np.array([jax.process_index()]), tiled=True)
    np.testing.assert_array_equal(gathered, [0, 1])
    # Weights every process holds whole (loaded from a checkpoint), even committed to a local device, go onto a
    # global sharding, each device receiving its shard.
    table = np.arange(32.0, dtype=np.float32).reshape(8, 4)
    placed = place(jax.device_put(table, jax.local_devices()[1]), NamedSharding(mesh, P("fsdp")))
    for shard in placed.addressable_shards:
        np.testing.assert_array_equal(shard.data, table[shard.index])
    np.testing.assert_array_equal(process_allgather(placed, tiled=True), table)
    (out / f"sharded_{jax.process_index()}").write_text("ok")


def preemption(out: Path) -> None:
    """Steps in lockstep (each ends with an all-reduce, as a train step does) until the guard says stop; writes the
    step where it stopped and the guard's cost per check."""
    mesh = make_mesh(data=2, fsdp=4)
    total = jax.jit(lambda a: jnp.sum(a), out_shardings=replicated(mesh))
    value = jax.device_put(np.ones(8, np.float32), NamedSharding(mesh, P(("data", "fsdp"))))
    me = jax.process_index()
    gather_seconds = time.perf_counter()
    for _ in range(20):
        process_allgather(np.array(False))
    gather_seconds = (time.perf_counter() - gather_seconds) / 20
    checks = []
    with PreemptionGuard() as guard:
        for step in range(100_000):
            assert float(total(value)) == 8.0
            (out / f"progress_{me}").write_text(str(step))
            start = time.perf_counter()
            stop = guard.should_stop(step)
            checks.append(time.perf_counter() - start)
            if stop:
                break
            time.sleep(0.01)
    record = {"step": step, "check_us": 1e6 * float(np.median(checks)), "allgather_us": 1e6 * gather_seconds}
    (out / f"stopped_{me}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    scenario, outdir = sys.argv[1], Path(sys.argv[2])
    initialize_distributed()
    initialize_distributed()  # idempotent
    {"sharded": sharded, "preemption": preemption}[scenario](outdir)
