"""Encoders: property tests against the stdlib json module and the oracle's MediaFiles rule."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import load_json
from oracle import media_hash as oracle_media_hash
from oracle import media_hashes as oracle_media_hashes

from pipeline import transforms
from pipeline.records import POSTS

# Any Unicode text SQLite can hold as TEXT (no NUL, no lone surrogates).
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


def _post_batch(rows: list[dict[str, str | None]]) -> pa.RecordBatch:
    cols = {c: [r.get(c) for r in rows] for c in POSTS.column_names}
    return pa.RecordBatch.from_pydict(cols, schema=pa.schema([(c, pa.string()) for c in POSTS.column_names]))


def _objects(rows: list[dict[str, str | None]]) -> list[dict]:
    out = transforms.json_batch(POSTS, transforms.typed(POSTS, _post_batch(rows)))
    return [json.loads(s) for s in out.column(0).to_pylist()]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), texts), min_size=1, max_size=20))
def test_text_round_trips_through_json(values):
    rows = [{"uri": f"u{i}", "text": v, "reply_parent": v} for i, v in enumerate(values)]
    objs = _objects(rows)
    assert [o["text"] for o in objs] == values
    # reply_parent is left out when NULL or empty
    assert [o.get("reply_parent") for o in objs] == [v or None for v in values]
    for o in objs:
        assert list(o)[:4] == ["uri", "cid", "did", "text"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(json_values, st.sampled_from([None, 2, "\t"]), st.booleans()), min_size=1, max_size=12))
def test_nested_json_comes_out_as_stored(items):
    stored = [json.dumps(v, indent=indent, ensure_ascii=ascii_) for v, indent, ascii_ in items]
    objs = _objects([{"uri": f"u{i}", "embed_data": s, "labels": None} for i, s in enumerate(stored)])
    assert [o["embed_data"] for o in objs] == [json.loads(s) for s in stored]
    for s in stored:
        line = transforms.json_batch(POSTS, transforms.typed(POSTS, _post_batch([{"uri": "u", "embed_data": s}])))
        assert '"embed_data":' + _stored_as_line(s) + "," in line.column(0)[0].as_py()
    assert all("labels" not in o for o in objs)


# Stored texts that are almost JSON: valid documents, cut, joined, wrapped or edited.
_json_ish = st.one_of(
    texts,
    json_values.map(json.dumps),
    st.tuples(json_values.map(json.dumps), st.integers(0, 40)).map(lambda t: t[0][: t[1]]),
    st.tuples(json_values.map(json.dumps), json_values.map(json.dumps), st.sampled_from([", ", ',"uri":', "} {", "\n"]))
    .map(lambda t: t[0] + t[2] + t[1]),
    st.sampled_from([
        '{}, "uri": "x"', '1,"x":2', '{"a":"x\ny"}', "NaN", "[1, NaN]", "Infinity", "1e400", "-1e400",
        '"\\ud800"', '{"\\udc00": 1}', "\u00a0{}", "{}\u00a0", "\f1", "\r\n[1,\r\n2]\r\n", " null ", "nul",
        "[" * 127 + "]" * 127, "[" * 128 + "]" * 128, '{"a":1,"a":2}', "9" * 400, "1} {", "01", "[1,]",
        '{"$type": "x", "a": NaN}', '{"$type": "x"} {}', '{"$type": 1e400}', '{"$type": null}',
        '{"$type": "x"},"uri":1',
        '{"$type": "x", "images": [{"fullsize": "https://x/y/abc@jpeg"}]}', '{"$type":"a\\ud800"}',
    ]),
)  # fmt: skip


def _stored_as_line(text: str) -> str:
    """What the export writes for a valid stored text: line breaks as spaces, JSON whitespace trimmed,
    U+2028/U+2029 (only possible inside its strings) escaped."""
    line = text.replace("\r", " ").replace("\n", " ").strip(" \t")
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


@settings(max_examples=300, deadline=None)
@given(st.lists(_json_ish, min_size=1, max_size=12))
def test_malformed_json_is_written_as_stored_string(values):
    rows = [{"uri": f"u{i}", "labels": v} for i, v in enumerate(values)]
    typed = transforms.typed(POSTS, _post_batch(rows))
    lines = transforms.json_batch(POSTS, typed).column(0).to_pylist()
    rejected = {r["key"] for r in transforms.rejects(POSTS, typed).to_pylist()}
    for i, v in enumerate(values):
        valid, want = load_json(v)
        obj = json.loads(lines[i], parse_constant=_no_constant)
        if valid:
            assert obj["labels"] == want
            assert '"labels":' + _stored_as_line(v) + "," in lines[i]  # the stored text, not a re-encoding
            assert f"u{i}" not in rejected
        else:
            assert obj["labels"] == v
            assert f"u{i}" in rejected


def _no_constant(name: str) -> object:
    raise AssertionError(f"export wrote {name}, which is not JSON")


@settings(max_examples=300, deadline=None)
@given(st.lists(_json_ish, min_size=1, max_size=20))
def test_valid_json_agrees_with_oracle(values):
    got = transforms.valid_json(pl.Series(values, dtype=pl.String)).to_list()
    assert got == [_stored_as_line(v) if load_json(v)[0] else None for v in values]


def test_validation_resumes_after_each_bad_value():
    values = ['{"a": 1}', "{bad", "[1, 2]", "", "nul", '"ok"', '1} {"v": 2', "{}", '{}, "uri": "x"', "null"]
    got = transforms.valid_json(pl.Series(values)).to_list()
    assert got == ['{"a": 1}', None, "[1, 2]", None, None, '"ok"', None, "{}", None, "null"]
    assert got == [v if load_json(v)[0] else None for v in values]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.fixed_dictionaries(
                {},
                optional={
                    "images": st.lists(
                        st.fixed_dictionaries(
                            {
                                "fullsize": st.from_regex(
                                    r"https://x/[a-z/]{0,8}[a-z0-9]{1,8}(@[a-z]{3,4})?", fullmatch=True
                                )
                                | st.text(alphabet="ab/@;\n.é", max_size=12)  # any text: '/', '@', ';', newlines
                            }
                        ),
                        max_size=3,
                    ),
                    "media": st.fixed_dictionaries(
                        {
                            "images": st.lists(
                                st.fixed_dictionaries(
                                    {"fullsize": st.from_regex(r"https://y/[a-z0-9]{1,8}@png", fullmatch=True)}
                                ),
                                max_size=2,
                            )
                        }
                    ),
                    "external": st.fixed_dictionaries(
                        {},
                        optional={
                            "thumb": st.from_regex(r"https://z/[a-z0-9]{1,8}@jpeg", fullmatch=True)
                            | st.text(alphabet="ab/@;\n", max_size=8)
                        },
                    ),
                    "record": st.just({"record": {"embeds": [{"images": [{"fullsize": "https://q/NOT@png"}]}]}}),
                },
            ),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_media_files_follow_the_rule(items):
    rows = [
        {"uri": f"u{i}", "has_media": "1" if has else "0", "embed_data": json.dumps(embed)}
        for i, (has, embed) in enumerate(items)
    ]
    csv = transforms.csv_batch(POSTS, transforms.typed(POSTS, _post_batch(rows)))
    got = csv.column("MediaFiles").to_pylist()
    assert got == [";".join(oracle_media_hashes(e)) if has else "" for has, e in items]


def test_media_files_slow_path_on_odd_shapes():
    embeds = ['{"external": {"thumb": {"$type": "blob"}}}', '{"images": [{"fullsize": "https://a/b/h1@jpeg"}]}']
    rows = [{"uri": f"u{i}", "has_media": "1", "embed_data": e} for i, e in enumerate(embeds)]
    csv = transforms.csv_batch(POSTS, transforms.typed(POSTS, _post_batch(rows)))
    assert csv.column("MediaFiles").to_pylist() == ["", "h1"]


def test_counts_and_booleans():
    rows = [
        {"uri": "a", "like_count": None, "is_reply": "1", "has_media": "0"},
        {"uri": "b", "like_count": "12", "is_reply": "0", "has_media": None},
        {"uri": "c", "like_count": "lots", "is_reply": "yes", "has_media": "1"},
    ]
    typed = transforms.typed(POSTS, _post_batch(rows))
    csv = transforms.csv_batch(POSTS, typed).to_pydict()
    assert csv["LikeCount"] == [0, 12, None]  # NULL is 0; a reject is left empty in CSV
    assert csv["IsReply"] == [True, False, None]
    objs = [json.loads(s) for s in transforms.json_batch(POSTS, typed).column(0).to_pylist()]
    assert [o["like_count"] for o in objs] == [0, 12, "lots"]  # NULL is 0 in every format
    assert [o["is_reply"] for o in objs] == [True, False, "yes"]
    assert sorted((r["key"], r["column"]) for r in transforms.rejects(POSTS, typed).to_pylist()) == [
        ("c", "is_reply"),
        ("c", "like_count"),
    ]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 400), max_size=8))
def test_outputs_do_not_depend_on_where_batches_are_cut(fixture_archive, cuts):
    """The runner joins source batches into units; any cut must give the same rows."""
    from pipeline import Archive, Filters

    with Archive(fixture_archive) as archive:
        source = archive.read(POSTS, Filters(), 100_000)
        whole = pa.Table.from_batches(list(source)).combine_chunks().to_batches()[0]
    pieces, start = [], 0
    for c in cuts:
        pieces.append(whole.slice(start, c))
        start += c
    pieces.append(whole.slice(start))
    formats = frozenset({"csv", "json"})
    one = transforms.transform(POSTS, whole, formats)
    many = [transforms.transform(POSTS, p, formats) for p in pieces if p.num_rows]
    assert pa.Table.from_batches([m.csv for m in many]).to_pylist() == pa.Table.from_batches([one.csv]).to_pylist()
    assert [x for m in many for x in m.json.column(0).to_pylist()] == one.json.column(0).to_pylist()

    def rejects(o):
        return o.rejects.drop_columns(["_row", "_col"]).to_pylist()

    assert [x for m in many for x in rejects(m)] == rejects(one)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | st.text(alphabet="ab/@:.;\n\r é", max_size=16), max_size=20))
def test_media_hash_cut_matches_bskyarchive(urls):
    """Every URL, however odd (several / and @, newlines, none of either), cut as the oracle cuts it."""
    got = transforms._hash_of(pa.array(urls, pa.string())).to_pylist()
    assert got == [None if u is None else oracle_media_hash(u) for u in urls]
