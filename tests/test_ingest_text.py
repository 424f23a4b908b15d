"""body_text rules (ingest/se_text.py) and the two tag formats."""

from __future__ import annotations

import pytest

from ingest.se_text import html_to_text, parse_tags


@pytest.mark.parametrize(("html", "text"), [
    (None, None),
    ("", ""),
    ("<p>a  b\n c</p>\n", "a b c"),
    ("<p>one</p>\n\n<p>two</p>", "one\n\ntwo"),
    ("<p>x &amp; y &lt;z&gt; &quot;q&quot; &#39;s&#39; &#x27;h&#x27;</p>",
     "x & y <z> \"q\" 's' 'h'"),
    ("<p>a&nbsp;b</p>", "a\u00a0b"),
    ("<p>&lt;p&gt; is not a tag</p>", "<p> is not a tag"),
    ("<p>line<br>next<br/>last</p>", "line\nnext\nlast"),
    ("<ul>\n<li>one</li>\n<li>two <em>2</em></li>\n</ul>", "- one\n\n- two 2"),
    ("<h2>Head</h2><blockquote><p>quoted</p></blockquote>", "Head\n\nquoted"),
    ('<p>see <a href="http://x.org/?a=1&amp;b=2">this</a> <img src="i.png" alt="i"></p>',
     "see this"),
    ("<p>Energy $E = mc^2$ and $$\\int_0^\\infty e^{-x}\\,dx = 1$$</p>",
     "Energy $E = mc^2$ and $$\\int_0^\\infty e^{-x}\\,dx = 1$$"),
    ("<p>$a &lt; b$ and \\(x_1\\)</p>", "$a < b$ and \\(x_1\\)"),
    ('<p>root <span class="math-container">$\\sqrt{2}$</span> is</p>',
     "root $\\sqrt{2}$ is"),
    ("<p>Code:</p>\n<pre><code>for i in x:\n    if i &lt; 2:\n        print(i)\n</code></pre>\n<p>done</p>",
     "Code:\n\nfor i in x:\n    if i < 2:\n        print(i)\n\ndone"),
    ("<pre class='lang-py'><code>  indented\n\n  blank above\n</code></pre>",
     "  indented\n\n  blank above"),
    ("<p>inline <code>a   b</code> code</p>", "inline a b code"),
    ("<hr><p>after rule</p>", "after rule"),
])
def test_html_to_text(html, text):
    assert html_to_text(html) == text


@pytest.mark.parametrize(("raw", "tags"), [
    (None, None),
    ("", []),
    ("<quantum-mechanics><spin>", ["quantum-mechanics", "spin"]),
    ("|quantum-mechanics|spin|", ["quantum-mechanics", "spin"]),
    ("<c++>", ["c++"]),
    ("|c#|.net|", ["c#", ".net"]),
])
def test_parse_tags(raw, tags):
    assert parse_tags(raw) == tags
