"""A long-tail chat vocabulary for the demo data: hundreds of messages built from templates.

Real chats repeat a few messages often and most rarely, and their messages share words: "see you
at the station", "meet me at the station at six". Templates with slots (times, places, names,
numbers, days, things) and short replies give such a vocabulary, so a model that scores text
(the CTC head) can carry what it learned from frequent messages over to rare and unseen ones.

``plcli demo-data --vocabulary long-tail --phrases N`` uses it. ``long_tail_messages(n, seed)``
returns ``n`` distinct messages (distinct after label normalisation), the same for the same
arguments.
"""

from __future__ import annotations

import itertools

import numpy as np

TIMES = ("noon", "five", "six thirty", "7:30", "8 pm", "ten", "half past four", "nine")
PLACES = ("the station", "the gym", "the office", "home", "the park", "the cafe", "school",
          "the airport", "the mall", "the library", "the beach", "the bus stop")
NAMES = ("Anna", "Tom", "Maria", "David", "Sara", "Ben", "Lucy", "Omar", "Mia", "Jack")
NUMBERS = ("two", "five", "ten", "fifteen", "twenty", "thirty")
DAYS = ("Monday", "Tuesday", "Friday", "Saturday", "Sunday", "tomorrow", "tonight")
THINGS = ("milk", "bread", "the keys", "an umbrella", "the charger", "some snacks", "your passport")
VEHICLES = ("bus", "train", "tram", "flight")
REPLIES = ("ok", "yes", "no", "sure", "thanks", "no problem", "sounds good", "on my way",
           "love you", "good night", "good morning", "see you soon", "maybe later", "not yet",
           "almost there", "be right back", "call me", "why not", "got it", "well done")

# (template, slots): each slot name is one of the lists above
TEMPLATES = (
    ("See you at {place}.", ("place",)),
    ("Meet me at {place} at {time}.", ("place", "time")),
    ("I'm at {place}.", ("place",)),
    ("Are you at {place}?", ("place",)),
    ("Pick me up at {place}.", ("place",)),
    ("I'm leaving {place} now.", ("place",)),
    ("I'll be there in {number} minutes.", ("number",)),
    ("Running {number} minutes late.", ("number",)),
    ("Dinner at {time}?", ("time",)),
    ("Call me at {time}.", ("time",)),
    ("Let's meet at {time}.", ("time",)),
    ("Can you call {name}?", ("name",)),
    ("{name} is coming too.", ("name",)),
    ("Tell {name} I said hi.", ("name",)),
    ("Did you see {name}?", ("name",)),
    ("Happy birthday, {name}!", ("name",)),
    ("{name} is at {place}.", ("name", "place")),
    ("Bring {thing}, please.", ("thing",)),
    ("Don't forget {thing}.", ("thing",)),
    ("I forgot {thing}.", ("thing",)),
    ("The {vehicle} is delayed.", ("vehicle",)),
    ("I'll take the {vehicle}.", ("vehicle",)),
    ("Missed the {vehicle}.", ("vehicle",)),
    ("See you {day}!", ("day",)),
    ("Are you free {day}?", ("day",)),
    ("Let's do {day} at {time}.", ("day", "time")),
    ("Meet {name} at {place}.", ("name", "place")),
    ("Taking the {vehicle} to {place}.", ("vehicle", "place")),
    ("{reply}.", ("reply",)),
)
SLOTS = {"time": TIMES, "place": PLACES, "name": NAMES, "number": NUMBERS, "day": DAYS,
         "thing": THINGS, "vehicle": VEHICLES, "reply": REPLIES}


def all_messages() -> list[str]:
    """Every message the templates make, in template order."""
    out = []
    for template, slots in TEMPLATES:
        for values in itertools.product(*(SLOTS[s] for s in slots)):
            text = template.format(**dict(zip(slots, values)))
            out.append(text[0].upper() + text[1:])
    return out


def long_tail_messages(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct messages (distinct after label normalisation): a seeded uniform sample of
    everything the templates make, in the sample's order (popularity is assigned separately)."""
    from plcli.data.labels import LabelNormalizer

    key = LabelNormalizer()
    uniq: dict[str, str] = {}
    for m in all_messages():
        uniq.setdefault(key(m), m)
    msgs = list(uniq.values())
    if not 2 <= n <= len(msgs):
        raise ValueError(f"the templates make {len(msgs)} distinct messages; ask for 2 to {len(msgs)}, "
                         f"got {n}")
    rng = np.random.default_rng([seed, 17])
    order = rng.permutation(len(msgs))
    return [msgs[i] for i in order[:n]]
