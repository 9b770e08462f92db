"""Hypothesis strategies for sales CSV lines that try to break the importer."""

from __future__ import annotations

from hypothesis import strategies as st

ORDER_IDS = ("K1", "K2", "K3")
"""Few ids, so lines of one file repeat them across chunks."""

EDGE_TIMES = (
    "2026-11-25T09:00:00+09:00",
    "2026-11-25 09:00:00",
    "0001-01-01T00:00:00+09:00",
    "0001-01-01T00:00:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59-09:00",
    "9999-12-31T23:59:59",
    "9999-12-31T23:59:59+14:00",
    "2026-03-08T02:30:00",
    "1987-05-10T02:30:00",
    "2026-11-04T01:30:00",
    "2026-W48-3",
    "20261125T090000Z",
    "2026-11-25T09:00:00.1234567",
    "\u0662\u0660\u0662\u0666-11-25T09:00:00",
    "2026-11-25T09:00:00\x00",
    "\ufeff2026-11-25",
)
EDGE_NUMBERS = (
    "0",
    "1",
    "1000000",
    "1000001",
    "-1",
    "+1",
    "1_0",
    "1e3",
    "nan",
    "inf",
    "0.00",
    "999999999.99",
    "1000000000",
    "12.345",
    "\u0661\u0662",
    "\uff11",
    "\u00b2",
    "9" * 5_000,
    "0" * 30 + "1",
    " 7 ",
)
# Characters that have broken parsers and databases before: NUL, CR, quotes, BOM, separators,
# non-ASCII digits, surrogate-free astral characters.
NASTY = "\x00\r\"',;\t \ufeff\u0661\uff11\u00a0\u2028\U0001f600\\"

nasty_text = st.text(alphabet=st.sampled_from(NASTY) | st.characters(), max_size=12).filter(
    lambda text: "\n" not in text
)
field = st.one_of(
    nasty_text,
    st.sampled_from(EDGE_NUMBERS),
    st.sampled_from(EDGE_TIMES),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@st.composite
def sales_line(draw: st.DrawFn) -> bytes:
    """One line without its newline: mostly sales-shaped with hostile fields, else raw bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=80)).replace(b"\n", b"")
    good = (
        ORDER_IDS,
        ("2026-11-25T09:00:00+09:00", "2026-11-25 09:00:00"),
        ("SEOUL-01", "BUSAN-02"),
        ("SKU-1", "SKU-2"),
        ("1", "2", "3"),
        ("1.00", "19.9", "0"),
    )
    # Each field is hostile one time in six, so about a third of the lines are valid.
    fields = [
        draw(field if draw(st.integers(0, 5)) == 0 else st.sampled_from(choices))
        for choices in good
    ]
    if kind == 1:
        fields = fields[: draw(st.integers(0, 7))]
    quote = draw(st.lists(st.booleans(), min_size=len(fields), max_size=len(fields)))
    text = ",".join(_quoted(f) if q else f for f, q in zip(fields, quote, strict=True))
    encoded = text.replace("\n", " ").encode("utf-8", errors="surrogatepass")
    return (
        draw(st.sampled_from((b"", b"\xef\xbb\xbf")))
        + encoded
        + draw(st.sampled_from((b"", b"\r", b"\r\r")))
    )
