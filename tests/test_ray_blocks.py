"""Ray Data internals colray relies on (`colray.ray_blocks`): if a Ray upgrade changes them,
this fails here, by name, instead of somewhere inside a run."""

from __future__ import annotations

import pyarrow as pa
import ray

from colray.ray_blocks import BlockRef, output_blocks


def test_ray_exposes_the_bundle_fields_colray_reads(ray_session):
    from ray.data._internal.execution.interfaces.ref_bundle import RefBundle

    assert hasattr(ray.data.Dataset, "iter_internal_ref_bundles")
    fields = RefBundle.__dataclass_fields__
    assert {"blocks", "slices"} <= set(fields), sorted(fields)
    bundle = next(iter(ray.data.range(3).iter_internal_ref_bundles()))
    entry = bundle.blocks[0]
    assert isinstance(entry.ref, ray.ObjectRef)
    assert len(bundle.slices) == len(bundle.blocks)
    for block_slice in bundle.slices:
        assert block_slice is None or {"start_offset", "end_offset"} <= set(dir(block_slice))


def test_output_blocks_cover_every_row_once(ray_session):
    dataset = ray.data.range(100, override_num_blocks=4).map_batches(
        lambda t: t, batch_format="pyarrow"
    )
    rows = [r for b in output_blocks(dataset) for r in b.fetch().column("id").to_pylist()]
    assert sorted(rows) == list(range(100))
    # A limit cuts a block: only the covered rows come back.
    limited = [r for b in output_blocks(ray.data.range(100, override_num_blocks=4).limit(7))
               for r in b.fetch().column("id").to_pylist()]  # fmt: skip
    assert sorted(limited) == list(range(7))


def test_a_block_reference_slices_the_block():
    table = pa.table({"x": list(range(10))})
    assert BlockRef(None, 2, 5).rows_of(table).column("x").to_pylist() == [2, 3, 4]
    assert BlockRef(None).rows_of(table).num_rows == 10
