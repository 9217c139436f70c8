"""Hypothesis strategies for hostile input: any text, printable junk with the characters
that matter to parsers, and the query parameter names the stream endpoint knows."""

from __future__ import annotations

import string

from hypothesis import strategies as st

__all__ = ["PARAM_NAMES", "ascii_junk", "text"]

PARAM_NAMES = ["sessionId", "ownerAccessKey", "group", "groupName", "lastEventId", "x", ""]
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
ascii_junk = st.text(alphabet=string.printable + "\x00\x7f*%&=", max_size=120)
