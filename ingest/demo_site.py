"""A small, made-up physics Q&A site in the dump's own format, for the demo and tests.

    python -m ingest.demo_site data/demo-site          # writes Posts.xml, Users.xml, ...
    python -m ingest.stackexchange data/demo-site --site physics.demo

Deterministic (same bytes every run). 40 questions with 3 answers each; scores are
drawn so that each prompt group (score <= -3, score >= 4) gets 35 posts with
1000-2300 characters of body text, and some posts are short or in between so the
selection has something to reject. Bodies are HTML the way the site renders them:
paragraphs, inline `$...$` and display `$$...$$` MathJax, `<pre><code>` blocks,
lists, links and entities such as `&amp;`. The files follow a 2025 dump: UTF-8 BOM,
an XML comment after the root tag, `|a|b|` tags, and the two fabricated posts
(1000000001, 1000000010, owner -1) that the loader must drop.
"""

from __future__ import annotations

import argparse
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

from ingest.se_text import html_to_text

SEED = 20150301
N_QUESTIONS = 40
ANSWERS_PER_QUESTION = 3
DEMO_SITE = "physics.demo"
N_HELDOUT = 24  # threads of the demo pair's held-out split, after the 40
HELDOUT_FIRST_ID = 1001
LICENSE = "CC BY-SA 4.0"

TOPICS = [
    ("harmonic-oscillator", "quantum-mechanics", "Why is the ground state energy of the"
     " quantum harmonic oscillator $\\hbar\\omega/2$ and not zero?"),
    ("special-relativity", "time-dilation", "Does a moving clock really run slow, or"
     " does it only look slow?"),
    ("thermodynamics", "entropy", "Why does entropy increase when an ideal gas expands"
     " freely into vacuum?"),
    ("quantum-tunneling", "quantum-mechanics", "How can a particle tunnel through a"
     " barrier higher than its energy?"),
    ("newtonian-mechanics", "friction", "Why does static friction not depend on the"
     " contact area?"),
    ("electromagnetism", "maxwell-equations", "Where does the displacement current in"
     " Maxwell's equations come from?"),
    ("general-relativity", "black-holes", "What happens to the time coordinate inside"
     " the event horizon?"),
    ("optics", "refraction", "Why does light slow down in glass if photons always"
     " travel at $c$?"),
    ("statistical-mechanics", "partition-function", "Why is the partition function"
     " $Z = \\sum_i e^{-\\beta E_i}$ the central object?"),
    ("fluid-dynamics", "bernoulli-equation", "Does Bernoulli's principle explain the"
     " lift of a wing?"),
]

SENTENCES = [
    "Consider a particle of mass $m$ moving in the potential $V(x) = \\frac{1}{2}"
    " m\\omega^2 x^2$.",
    "The uncertainty relation $\\Delta x \\, \\Delta p \\geq \\hbar/2$ forbids both"
    " the position and the momentum from vanishing at the same time.",
    "In the rest frame of the clock the proper time is $d\\tau = dt\\sqrt{1 -"
    " v^2/c^2}$, and nothing about the clock itself has changed.",
    "For a free expansion no work is done and no heat flows, so $\\Delta U = 0$ &amp;"
    " the temperature of an ideal gas stays the same.",
    "The entropy change follows from a reversible path between the same end states:"
    " $\\Delta S = n R \\ln(V_2/V_1) &gt; 0$.",
    "Inside the barrier the wave function decays like $e^{-\\kappa x}$ with $\\kappa"
    " = \\sqrt{2m(V_0 - E)}/\\hbar$, so it is small but not zero on the far side.",
    "Microscopically only a tiny fraction of the apparent area is in contact, and that"
    " fraction grows in proportion to the normal load.",
    "Taking the divergence of Ampère's law gives $\\nabla \\cdot (\\nabla \\times"
    " \\mathbf{B}) = 0$, which contradicts charge conservation unless a term"
    " $\\mu_0 \\epsilon_0 \\partial \\mathbf{E}/\\partial t$ is added.",
    "Inside the horizon of a Schwarzschild black hole the coordinate $r$ becomes"
    " timelike, and moving to smaller $r$ is as unavoidable as moving to the future.",
    "The phase velocity in the medium is $v = c/n$, while every photon between two"
    " atoms still moves at $c$; the delay comes from the response of the bound"
    " charges.",
    "All thermodynamic quantities follow from derivatives of $\\ln Z$, for instance"
    " $\\langle E \\rangle = -\\partial \\ln Z / \\partial \\beta$.",
    "Along a streamline of a steady, inviscid flow $p + \\frac{1}{2}\\rho v^2 +"
    " \\rho g h$ is constant, but that alone does not tell you why the flow is faster"
    " over the wing.",
    "A dimensional argument already fixes the scale: the only energy one can build"
    " from $\\hbar$, $m$ and $\\omega$ is $\\hbar\\omega$.",
    "It helps to write the Hamiltonian as $H = \\hbar\\omega(a^\\dagger a +"
    " \\tfrac{1}{2})$ and to notice that $a|0\\rangle = 0$.",
    "The experiment with muons created in the upper atmosphere shows the effect"
    " directly: far more of them reach the ground than their lifetime at rest would"
    " allow.",
    "This is the same reason why a ball rolling on a table eventually stops &amp;"
    " why the energy ends up as heat in both surfaces.",
    "I have read several textbooks on this and each of them seems to skip the one"
    " step that I do not understand.",
    "Please do not just quote the formula; I would like to understand where it comes"
    " from physically.",
    "As far as I can tell the standard derivation assumes what it wants to prove, so"
    " I suspect there is a hidden assumption somewhere.",
    "The short answer is that the question mixes up two different notions of"
    " velocity, and once they are separated the paradox goes away.",
]

WEAK_SENTENCES = [
    "i think its just because of energy and stuff, everybody knows that.",
    "This is obviously wrong, physics is all made up anyway &amp; nobody checks it.",
    "Just google it, there are lots of videos about this.",
    "My teacher said something else but I forgot what, so maybe it is the opposite.",
    "It has to be magnets. Everything strange in physics is magnets.",
    "Einstein was wrong about this, I read it on a forum years ago.",
]

CODE = """import numpy as np

hbar, m, omega = 1.0, 1.0, 2.0
x = np.linspace(-5, 5, 1001)
V = 0.5 * m * omega**2 * x**2
for n in range(3):
    E = hbar * omega * (n + 0.5)
    print(f"E_{n} = {E:.3f}", "bound" if E &lt; V.max() else "free")
"""

DISPLAY = [
    "$$E_n = \\hbar\\omega\\left(n + \\frac{1}{2}\\right), \\qquad n = 0, 1, 2,"
    " \\dots$$",
    "$$\\Delta t = \\frac{\\Delta \\tau}{\\sqrt{1 - v^2/c^2}}$$",
    "$$T \\approx e^{-2\\kappa L}, \\qquad \\kappa = \\frac{\\sqrt{2m(V_0 -"
    " E)}}{\\hbar}$$",
    "$$\\nabla \\times \\mathbf{B} = \\mu_0 \\mathbf{J} + \\mu_0\\epsilon_0"
    " \\frac{\\partial \\mathbf{E}}{\\partial t}$$",
]


def _body(rng: random.Random, min_chars: int, max_chars: int, weak: bool) -> str:
    """HTML paragraphs until the text is between min_chars and max_chars long."""
    pool = WEAK_SENTENCES + SENTENCES[:6] if weak else SENTENCES
    parts: list[str] = []
    target = rng.randint(min_chars, max_chars)
    used_code = used_list = False
    while True:
        k = rng.random()
        if k < 0.12 and not used_code and not weak:
            parts.append(f"<pre><code>{CODE}</code></pre>")
            used_code = True
        elif k < 0.22:
            parts.append(f"<p>{rng.choice(DISPLAY)}</p>")
        elif k < 0.3 and not used_list:
            items = "".join(f"<li>{rng.choice(pool)}</li>"
                            for _ in range(2))
            parts.append(f"<ul>\n{items}\n</ul>")
            used_list = True
        else:
            sents = " ".join(rng.choice(pool) for _ in range(rng.randint(2, 3)))
            if rng.random() < 0.15:
                sents += (' See <a href="https://en.wikipedia.org/wiki/Physics"'
                          ' rel="nofollow noreferrer">this article</a>.')
            parts.append(f"<p>{sents}</p>")
        html = "\n\n".join(parts) + "\n"
        n = len(html_to_text(html))
        if n >= target:
            if n <= max_chars or len(parts) == 1:
                return html
            parts.pop()
            used_code = used_code and any("<pre>" in p for p in parts)
            if len(html_to_text("\n\n".join(parts))) >= min_chars:
                return "\n\n".join(parts) + "\n"


def _attr(v) -> str:
    s = escape(str(v), {'"': "&quot;", "\n": "&#xA;", "\r": "&#xD;"})
    return s


def _row(**attrs) -> str:
    return "  <row " + " ".join(
        f'{k}="{_attr(v)}"' for k, v in attrs.items() if v is not None
    ) + " />"


def _write(path: Path, root: str, rows: list[str], comment: str | None = None) -> None:
    lines = ['<?xml version="1.0" encoding="utf-8"?>', f"<{root}>"]
    if comment:
        lines.append(f"<!-- {comment} -->")
    lines += rows
    lines.append(f"</{root}>")
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode("utf-8"))


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _score(rng: random.Random, i: int) -> tuple[int, bool]:
    """(score, long?) for the i-th post: 1/4 low, 1/4 high, the rest in between;
    7 of 8 posts of each kind long (>= 1000 characters of text)."""
    kind = i % 4
    if kind == 0:
        score = rng.randint(-9, -3)
    elif kind == 1:
        score = rng.randint(4, 60)
    else:
        score = rng.randint(-2, 3)
    long_ = (i // 4) % 8 != 3
    return score, long_


def heldout(site: str, thread: int, mod: int = 10) -> bool:
    """The demo pair's held-out split (compute.train_demo): a thread (a question and
    its answers) is held out of the tokenizer, the pretraining and the fine-tuning
    when crc32("site:question id") % mod == 0."""
    return zlib.crc32(f"{site}:{thread}".encode()) % mod == 0


def heldout_ids(start: int, n: int, site: str = DEMO_SITE) -> list[int]:
    """n question ids from `start` on, at least 4 apart (a question and its three
    answers), each of a thread the demo pair's split holds out."""
    out, qid = [], start
    while len(out) < n:
        if heldout(site, qid):
            out.append(qid)
            qid += ANSWERS_PER_QUESTION + 1
        else:
            qid += 1
    return out


@dataclass
class _Site:
    """The rows being written and the running ids and clock."""

    rng: random.Random
    n_users: int
    t: datetime
    posts: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    votes: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    tag_counts: dict[str, int] = field(default_factory=dict)
    vote_id: int = 1
    comment_id: int = 1
    hist_id: int = 1

    def thread(self, qid: int, title: str, tags: list[str], n_answers: int,
               score_of: Callable[[int], tuple[int, bool]]) -> None:
        """A question (id qid) and its answers (qid + 1, ...); score_of(a) gives post
        a's (score, long?), drawn just before its body."""
        rng = self.rng
        for tag in tags:
            self.tag_counts[tag] = self.tag_counts.get(tag, 0) + 1
        for a in range(n_answers + 1):
            score, long_ = score_of(a)
            post_id = qid + a
            body = (_body(rng, 1050, 2300, score < 0) if long_
                    else _body(rng, 250, 800, score < 0))
            owner = rng.randint(1, self.n_users)
            self.t += timedelta(hours=rng.randint(1, 20),
                                milliseconds=rng.randint(0, 999))
            t = self.t
            common = dict(CreationDate=_fmt(t), Score=score, Body=body,
                          OwnerUserId=owner, LastActivityDate=_fmt(t + timedelta(days=2)),
                          CommentCount=1, ContentLicense=LICENSE)
            if a == 0:
                self.posts.append(_row(
                    Id=qid, PostTypeId=1, AcceptedAnswerId=qid + 1 if score > 0 else None,
                    **common, ViewCount=rng.randint(20, 9000), Title=title,
                    Tags="|" + "|".join(tags) + "|", AnswerCount=n_answers,
                    FavoriteCount=None))
                self.history.append(_row(
                    Id=self.hist_id, PostHistoryTypeId=1, PostId=qid,
                    RevisionGUID=f"00000000-0000-4000-8000-{qid:012d}",
                    CreationDate=_fmt(t), UserId=owner, Text=title,
                    ContentLicense=LICENSE))
                self.hist_id += 1
            else:
                self.posts.append(_row(Id=post_id, PostTypeId=2, ParentId=qid, **common))
            self.history.append(_row(
                Id=self.hist_id, PostHistoryTypeId=2, PostId=post_id,
                RevisionGUID=f"00000000-0000-4000-8000-{post_id:012d}",
                CreationDate=_fmt(t), UserId=owner, Text=html_to_text(body),
                ContentLicense=LICENSE))
            self.hist_id += 1
            self.comments.append(_comment(rng, self.comment_id, post_id, t,
                                          self.n_users))
            self.comment_id += 1
            self.votes += _votes(self.vote_id, post_id, score, t)
            self.vote_id += abs(score)


def _heldout_scores(rng: random.Random, h: int) -> list[tuple[int, bool]]:
    """(score, long?) of held-out thread h: a well-received question (even h) or a
    badly received one (odd h), then a well-received, a badly received and an
    in-between answer, all long but the last: both groups of both post types."""
    question = rng.randint(4, 60) if h % 2 == 0 else rng.randint(-9, -3)
    return [(question, True), (rng.randint(4, 60), True), (rng.randint(-9, -3), True),
            (rng.randint(-2, 3), False)]


def _users(rng: random.Random, t0: datetime, n_users: int) -> list[str]:
    users = [_row(Id=-1, Reputation=1, CreationDate=_fmt(t0 - timedelta(days=30)),
                  DisplayName="Community", LastAccessDate=_fmt(t0),
                  Location="on the server farm", AboutMe="<p>Hi, I'm not really a"
                  " person.</p>\n", Views=0, UpVotes=100, DownVotes=20, AccountId=-1)]
    for u in range(1, n_users + 1):
        users.append(_row(
            Id=u, Reputation=rng.randint(1, 25000),
            CreationDate=_fmt(t0 - timedelta(days=rng.randint(1, 900))),
            DisplayName=f"user{u:03d}", LastAccessDate=_fmt(t0 + timedelta(days=90)),
            Location=rng.choice([None, "Berlin", "São Paulo", "Pune", "Ottawa"]),
            Views=rng.randint(0, 500), UpVotes=rng.randint(0, 300),
            DownVotes=rng.randint(0, 40), AccountId=1000 + u,
        ))
    return users


def _fabricated(t: datetime) -> list[str]:
    """The two rows recent dumps plant (a question and an answer owned by -1)."""
    return [_row(Id=1000000001, PostTypeId=1, CreationDate=_fmt(t), Score=0,
                 Body="<p>This post is fabricated.</p>\n", OwnerUserId=-1,
                 Title="Fabricated", Tags="|fabricated|", ContentLicense=LICENSE),
            _row(Id=1000000010, PostTypeId=2, ParentId=1000000001,
                 CreationDate=_fmt(t), Score=0,
                 Body="<p>This answer is fabricated.</p>\n", OwnerUserId=-1,
                 ContentLicense=LICENSE)]


def _comment(rng: random.Random, comment_id: int, post_id: int, t: datetime,
             n_users: int) -> str:
    """Comments.xml's row of a post, half an hour after it."""
    return _row(
        Id=comment_id, PostId=post_id, Score=rng.randint(0, 5),
        Text=rng.choice(["Could you add a reference?", "Nice derivation & clear.",
                         "This doesn't answer the question.",
                         "What about the relativistic case?"]),
        CreationDate=_fmt(t + timedelta(minutes=30)),
        UserId=rng.randint(1, n_users), ContentLicense=LICENSE)


def _votes(vote_id: int, post_id: int, score: int, t: datetime) -> list[str]:
    """|score| up (score > 0) or down votes, numbered from `vote_id`, on the day."""
    day = _fmt(t.replace(hour=0, minute=0, second=0, microsecond=0))
    return [_row(Id=vote_id + v, PostId=post_id, VoteTypeId=2 if score > 0 else 3,
                 CreationDate=day) for v in range(abs(score))]


def generate(outdir: str | Path) -> dict[str, int]:
    """Write the site's XML files into `outdir`; returns rows per file."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    t0 = datetime(2015, 3, 1, 9, 0, 0, 123000)
    n_users = 30
    users = _users(rng, t0, n_users)
    site = _Site(rng, n_users, t0)
    question_ids, i = [], 0
    for q in range(N_QUESTIONS):
        tag_a, tag_b, title = TOPICS[q % len(TOPICS)]
        if q >= len(TOPICS):
            title = title.rstrip("?") + f" (part {q // len(TOPICS) + 1})?"
        qid = 1 + q * (ANSWERS_PER_QUESTION + 1)
        site.thread(qid, title, [tag_a, tag_b], ANSWERS_PER_QUESTION,
                    lambda a, i=i: _score(rng, i + a))
        i += ANSWERS_PER_QUESTION + 1
        question_ids.append(qid)
    # threads the demo pair's split holds out (their own generator: the threads
    # above, which the pair was trained on, keep their bytes)
    site.rng = held_rng = random.Random(SEED + 1)
    for h, qid in enumerate(heldout_ids(HELDOUT_FIRST_ID, N_HELDOUT)):
        tag_a, tag_b, title = TOPICS[h % len(TOPICS)]
        title = title.rstrip("?") + f" (follow-up {h + 1})?"
        scored = _heldout_scores(held_rng, h)
        site.thread(qid, title, [tag_a, tag_b], len(scored) - 1, scored.__getitem__)
        question_ids.append(qid)
    t = site.t
    links = [_row(Id=k, CreationDate=_fmt(t), PostId=question_ids[k],
                  RelatedPostId=question_ids[k - 1], LinkTypeId=1)
             for k in range(1, N_QUESTIONS, 7)]
    posts = [*site.posts, *_fabricated(t)]
    tags = [_row(Id=n + 1, TagName=name, Count=c)
            for n, (name, c) in enumerate(sorted(site.tag_counts.items()))]
    badges = [_row(Id=u, UserId=u, Name="Autobiographer", Date=_fmt(t0), Class=3,
                   TagBased="False") for u in range(1, n_users + 1)]
    files = {
        "Posts.xml": ("posts", posts), "Users.xml": ("users", users),
        "Comments.xml": ("comments", site.comments), "Votes.xml": ("votes", site.votes),
        "Tags.xml": ("tags", tags), "Badges.xml": ("badges", badges),
        "PostLinks.xml": ("postlinks", links),
        "PostHistory.xml": ("posthistory", site.history),
    }
    for name, (root, rows) in files.items():
        _write(out / name, root, rows,
               comment="physics.demo: generated by ingest.demo_site, not real posts"
               if root == "posts" else None)
    return {name: len(rows) for name, (_, rows) in files.items()}


def main(argv: list[str] | None = None) -> int:
    """python -m ingest.demo_site OUTDIR: write the site; exit status."""
    ap = argparse.ArgumentParser(prog="python -m ingest.demo_site",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    counts = generate(args.outdir)
    print(f"demo site in {args.outdir}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
