"""How results show themselves: at a prompt (``__repr__``) and in a notebook (``_repr_html_``).

One mixin for every object with a text form: ``TextShown`` takes ``_text()`` (a table or
a listing) and shows it as is at a prompt and as preformatted HTML in a notebook.

    >>> class T(TextShown):
    ...     def _text(self): return "a < b"
    >>> T(), T()._repr_html_()
    (a < b, '<pre style="line-height: 1.25">a &lt; b</pre>')
"""
from __future__ import annotations

import html


class TextShown:
    def _text(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define _text()")

    def __repr__(self) -> str:
        return self._text()

    def _repr_html_(self) -> str:
        return f'<pre style="line-height: 1.25">{html.escape(self._text())}</pre>'
