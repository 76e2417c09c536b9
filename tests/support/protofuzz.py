"""Hypothesis strategies for any protobuf message, from its descriptor: malformed and extreme values.

Every field gets values its wire type allows, biased towards the edges a
validator must handle: integer bounds and -1, empty/huge/unicode/control
strings, unknown enum numbers, long lists and maps, and a few plausible
values ("web", "n1", "c1") so requests also get past the first checks.
Nesting stops at `depth` so examples stay small enough to be fast.
"""

from __future__ import annotations

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import strategies as st

_INT_BOUNDS = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
PLAUSIBLE = ["web", "n1", "n2", "c1", "c2", "zone", "a", "sleep", "j1.0", "127.0.0.1:7001", "="]
# Lengths around the bounds in controller/state/validate.py and control_service.py.
EDGE_LENGTHS = [0, 1, 63, 64, 65, 253, 254, 256, 257, 1024, 1025, 4096, 4097, 65537]


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({lo, hi, 0, 1, max(lo, -1), min(hi, 2), min(hi, 10_001), min(hi, 2**31 - 1)})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -5), min(hi, 100)))


def strings() -> st.SearchStrategy[str]:
    long = st.builds(
        lambda ch, n: ch * n,
        st.sampled_from(["a", "é", "\x00", " ", "-", "\U0001f600"]),
        st.sampled_from(EDGE_LENGTHS),
    )
    return st.one_of(st.sampled_from(PLAUSIBLE), st.text(max_size=24), long)


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t in _INT_BOUNDS:
        return ints(*_INT_BOUNDS[t])
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if t == d.FieldDescriptor.TYPE_FLOAT else 64
        )
    if t == d.FieldDescriptor.TYPE_STRING:
        return strings()
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == d.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), ints(-(2**31), 2**31 - 1))
    raise AssertionError(f"unhandled field type {t}")


def _is_map(field: d.FieldDescriptor) -> bool:
    return (
        field.type == d.FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )


def _sizes() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, 3), st.sampled_from([0, 1, 64, 65, 257, 1025]))


def messages(desc: d.Descriptor, depth: int = 3) -> st.SearchStrategy:
    """Messages of type `desc` with a random subset of fields set to random (often extreme) values."""
    cls = message_factory.GetMessageClass(desc)
    field_strats = {}
    for f in desc.fields:
        if f.type == d.FieldDescriptor.TYPE_MESSAGE and not _is_map(f) and depth <= 0:
            continue
        if _is_map(f):
            key = _scalar(f.message_type.fields_by_name["key"])
            vf = f.message_type.fields_by_name["value"]
            val = (
                messages(vf.message_type, depth - 1)
                if vf.type == d.FieldDescriptor.TYPE_MESSAGE
                else _scalar(vf)
            )
            strat = st.one_of(
                st.dictionaries(key, val, max_size=4),
                st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, _sizes())
                if vf.type == d.FieldDescriptor.TYPE_STRING
                and f.message_type.fields_by_name["key"].type == d.FieldDescriptor.TYPE_STRING
                else st.dictionaries(key, val, max_size=2),
            )
        elif f.type == d.FieldDescriptor.TYPE_MESSAGE:
            inner = messages(f.message_type, depth - 1)
            strat = st.lists(inner, max_size=3) if f.is_repeated else inner
        else:
            item = _scalar(f)
            if f.is_repeated:
                strat = st.one_of(st.lists(item, max_size=4), st.builds(lambda n, v: [v] * n, _sizes(), item))
            else:
                strat = item
        field_strats[f.name] = st.one_of(st.none(), strat)

    def build(values: dict):
        m = cls()
        for name, value in values.items():
            if value is None:
                continue
            f = desc.fields_by_name[name]
            try:
                if _is_map(f):
                    target = getattr(m, name)
                    for k, v in value.items():
                        if f.message_type.fields_by_name["value"].type == d.FieldDescriptor.TYPE_MESSAGE:
                            target[k].CopyFrom(v)
                        else:
                            target[k] = v
                elif f.type == d.FieldDescriptor.TYPE_MESSAGE:
                    if f.is_repeated:
                        getattr(m, name).extend(value)
                    else:
                        getattr(m, name).CopyFrom(value)
                elif f.is_repeated:
                    getattr(m, name).extend(value)
                else:
                    setattr(m, name, value)
            except (ValueError, TypeError):
                # e.g. a lone surrogate in a string field: protobuf cannot even encode it.
                continue
        return m

    return st.fixed_dictionaries({}, optional=field_strats).map(build)
