"""Sample messages with the skew of real traffic: a few very active users and big cities."""

from __future__ import annotations

import random
from collections.abc import Iterator

from messaging.models import Message

CITIES = [
    "Paris",
    "London",
    "Berlin",
    "Madrid",
    "Rome",
    "Lisbon",
    "Dublin",
    "Vienna",
    "Prague",
    "Warsaw",
    "Budapest",
    "Athens",
    "Oslo",
    "Stockholm",
    "Helsinki",
    "Copenhagen",
    "Amsterdam",
    "Brussels",
    "Zürich",
    "Geneva",
    "Lyon",
    "Marseille",
    "Toulouse",
    "München",
    "Köln",
    "Kraków",
    "Łódź",
    "São Paulo",
    "México",
    "Montréal",
    "New York",
    "Chicago",
    "Tokyo",
    "Ōsaka",
    "Seoul",
    "Beijing",
    "Mumbai",
    "Delhi",
    "Cairo",
    "Lagos",
    "Nairobi",
    "Sydney",
]


def messages(count: int, seed: int = 0) -> Iterator[Message]:
    """``count`` unsaved messages: usernames and cities drawn from skewed distributions
    (a few users write most messages; a few big cities and a long tail of towns), and 5% of
    messages without a city."""
    rnd = random.Random(seed)
    users = max(count // 4, 10)
    for _ in range(count):
        user = int(users * rnd.random() ** 3)
        city_rank = int(rnd.paretovariate(1.1)) - 1
        if rnd.random() < 0.05:
            city = None
        elif city_rank < len(CITIES):
            city = CITIES[city_rank]
        else:
            city = f"Town {city_rank % 5000}"
        yield Message(username=f"user{user}", city=city, text="hello")
