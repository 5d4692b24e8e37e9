"""Built-in demo tasks, generated deterministically (no downloads).

Four small suites that stand in for the paper's task families: two sentiment
domains (movie and product reviews), a three-way NLI-like pair task and a
four-way topic task. Each example mixes cue words with distractors (contrast
clauses, neutral filler, cues of the other class that are negated), and a fixed
share of labels (``LABEL_NOISE``) is flipped at random, as annotation noise, so
that scores stay informative (ceiling about 1 - LABEL_NOISE) rather than 100%.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

_POS = ["wonderful", "great", "excellent", "delightful", "superb", "moving", "brilliant", "enjoyable", "charming", "solid"]
_NEG = ["awful", "terrible", "boring", "dull", "disappointing", "clumsy", "weak", "tedious", "messy", "forgettable"]
_POS_VERB = ["loved", "enjoyed", "admired", "recommend", "cherished"]
_NEG_VERB = ["hated", "regretted", "disliked", "could not stand", "wasted money on"]

_MOVIE_SUBJ = ["the film", "this movie", "the plot", "the acting", "the soundtrack", "the script", "the ending",
               "the cast", "the cinematography", "the director's latest work", "the sequel", "the dialogue"]
_MOVIE_FILL = ["I saw it on a rainy sunday.", "It runs just under two hours.", "My friend picked it.",
               "The cinema was half empty.", "It is based on a novel.", "I went with my sister."]
_PRODUCT_SUBJ = ["the battery", "the screen", "the delivery", "this blender", "the headphones", "the keyboard",
                 "the customer service", "the packaging", "this laptop", "the charger", "the camera", "the app"]
_PRODUCT_FILL = ["I ordered it last month.", "It came in a blue box.", "I use it every day.",
                 "The price was average.", "It was a gift for my father.", "It replaced an older model."]


def _sentiment(rng: np.random.Generator, n: int, subjects, fillers, thing: str) -> pd.DataFrame:
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        good, bad = (_POS, _NEG) if label == 1 else (_NEG, _POS)
        verbs = _POS_VERB if label == 1 else _NEG_VERB
        s1, s2 = rng.choice(subjects, 2, replace=False)
        style = rng.integers(4)
        if style == 0:
            text = f"{s1.capitalize()} was {rng.choice(good)}."
        elif style == 1:
            text = f"At first {s1} seemed {rng.choice(bad)}, but overall {s2} was {rng.choice(good)}."
        elif style == 2:
            text = f"I {rng.choice(verbs)} this {thing}. {s1.capitalize()} was {rng.choice(good)}."
        else:
            text = f"{s1.capitalize()} was not {rng.choice(bad)} at all; {s2} felt {rng.choice(good)}."
        if rng.random() < 0.5:
            text = f"{rng.choice(fillers)} {text}"
        rows.append({"text": text, "label": ["negative", "positive"][label]})
    return pd.DataFrame(rows)


_PEOPLE = [("a man", "a person"), ("a woman", "a person"), ("two children", "some kids"),
           ("an old man", "a person"), ("a girl", "a child"), ("a group of friends", "some people")]
_ACTS = [("playing guitar", "making music"), ("riding a bike", "cycling"), ("cooking dinner", "preparing food"),
         ("reading a book", "reading"), ("running", "exercising"), ("painting a wall", "working")]
_PLACES = ["park", "kitchen", "street", "garden", "library", "beach"]
_CONTRA = ["sleeping at home", "sitting in a car", "swimming in the sea", "watching television"]
_NEUTRAL = ["to relax after work", "for the first time", "with a friend", "because they are bored", "for money"]


def _nli(rng: np.random.Generator, n: int) -> pd.DataFrame:
    rows = []
    names = ["entailment", "neutral", "contradiction"]
    for _ in range(n):
        (who, who_gen), (act, act_gen) = _PEOPLE[rng.integers(len(_PEOPLE))], _ACTS[rng.integers(len(_ACTS))]
        place = rng.choice(_PLACES)
        premise = f"{who.capitalize()} is {act} in the {place}."
        label = int(rng.integers(3))
        if label == 0:
            hyp = rng.choice([f"{who_gen.capitalize()} is {act_gen}.", f"Someone is in the {place}.",
                              f"{who.capitalize()} is {act}."])
        elif label == 1:
            hyp = rng.choice([f"{who.capitalize()} is {act} {rng.choice(_NEUTRAL)}.",
                              f"{who.capitalize()} is very happy.", f"The {place} is crowded."])
        else:
            hyp = rng.choice([f"{who.capitalize()} is {rng.choice(_CONTRA)}.", f"Nobody is in the {place}.",
                              f"{who.capitalize()} is not {act}."])
        rows.append({"premise": premise, "hypothesis": hyp, "label": names[label]})
    return pd.DataFrame(rows)


_TOPICS = {
    "sports": ["the team won the final", "the striker scored twice", "the coach praised the defense",
               "the tennis match went to five sets", "fans filled the stadium", "the runner broke the record"],
    "science": ["researchers observed a new particle", "the telescope captured a distant galaxy",
                "a study of cells revealed a protein", "the experiment confirmed the theory",
                "scientists sequenced the genome", "the lab measured the reaction rate"],
    "business": ["shares rose after the earnings report", "the company announced a merger",
                 "the bank raised interest rates", "investors sold their stock", "the startup raised funding",
                 "profits fell in the third quarter"],
    "politics": ["the parliament passed the bill", "the minister resigned yesterday", "voters went to the polls",
                 "the senator proposed a new law", "the president met foreign leaders",
                 "the election campaign began"],
}
_TOPIC_FILL = ["According to reports,", "On monday,", "In a surprise move,", "Late last night,", "As expected,"]


def _topics(rng: np.random.Generator, n: int) -> pd.DataFrame:
    names = list(_TOPICS)
    rows = []
    for _ in range(n):
        label = int(rng.integers(len(names)))
        main = rng.choice(_TOPICS[names[label]])
        text = f"{rng.choice(_TOPIC_FILL)} {main}."
        if rng.random() < 0.3:  # a weaker cue of another topic
            other = names[(label + 1 + rng.integers(len(names) - 1)) % len(names)]
            text += f" Some compared it to how {rng.choice(_TOPICS[other])}, but that was secondary."
        rows.append({"text": text, "label": names[label]})
    return pd.DataFrame(rows)


LABEL_NOISE = 0.1


def _add_noise(df: pd.DataFrame, rng: np.random.Generator, names: list[str]) -> pd.DataFrame:
    flip = rng.random(len(df)) < LABEL_NOISE
    other = rng.integers(1, len(names), len(df))
    idx = df["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    df.loc[flip, "label"] = [names[(i + o) % len(names)] for i, o in zip(idx[flip], other[flip])]
    return df


GENERATORS = {
    "movie_reviews": lambda rng, n: _sentiment(rng, n, _MOVIE_SUBJ, _MOVIE_FILL, "movie"),
    "product_reviews": lambda rng, n: _sentiment(rng, n, _PRODUCT_SUBJ, _PRODUCT_FILL, "product"),
    "nli": _nli,
    "topics": _topics,
}


LABELS = {"movie_reviews": ["negative", "positive"], "product_reviews": ["negative", "positive"],
          "nli": ["entailment", "neutral", "contradiction"], "topics": list(_TOPICS)}


def generate(name: str, size: int, seed: int = 0) -> pd.DataFrame:
    """Rows with raw text columns and a string ``label``; same (name, size, seed) -> same frame."""
    if name not in GENERATORS:
        raise KeyError(f"unknown demo generator '{name}'; known: {sorted(GENERATORS)}")
    # the generator name enters the seed so that suites differ even at the same seed
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    df = GENERATORS[name](rng, size)
    return _add_noise(df, rng, LABELS[name])
