"""The review-serving guard's text checks (redis_llm.review_match), without a
server: numbers, negation and names must agree, exact repeats always pass, and
the embedding check refuses what the embedder says differs."""

import numpy as np
import pytest

from redis_llm.review_match import mask, mismatch, normalize, terms


@pytest.mark.parametrize("asked, reviewed", [
    ("When was the Velmora Bridge built?", "when was the velmora bridge built"),
    ("When was the Velmora Bridge built?", "  When   was the Velmora Bridge built ?!"),
    ("Who designed the Velmora bridge?", "Who designed the Velmora Bridge?"),
    ("How tall is Orsk Tower?", "What is the height of the Orsk Tower?"),
    ("How many moons does Kelvar have?", "Kelvar has how many moons?"),
    ("In which year did Tarsk Mills close?", "When did Tarsk Mills close?"),
    ("How many staff did the Orvel lab have in 1990?", "In 1990, how many employees worked at Orvel lab?"),
    ("Were there three founders of Halvik?", "Were there 3 founders of Halvik?"),
    # "first" may be an adverb; an implied end of a scale or measure is fine.
    ("Which woman first swam the Varrow Strait?", "Who was the first woman to swim the Varrow Strait?"),
    ("Who discovered Fennostra lucens?", "Who first identified Fennostra lucens?"),
    ("What is the maximum depth of Lake Ombrisse?", "How deep is Lake Ombrisse?"),
    ("What was the name of the debut album by Orrery?", "What was Orrery's first album?"),
    ("How many tubas a year come out of Vantorp?", "How many tubas does Vantorp make each year?"),
    # A qualifying name added or left out is not another entity.
    ("Who painted the mural in Quellbrook?", "Who painted the mural?"),
    ("What is the room count of the Quillmere Hotel in Port Averick?",
     "How many guest rooms does the Quillmere Hotel have?"),
])
def test_same_questions_pass_the_text_checks(asked, reviewed):
    assert mismatch(asked, reviewed) is None
    assert mismatch(reviewed, asked) is None


@pytest.mark.parametrize("asked, reviewed, why", [
    ("When was the Velmora Bridge built?", "When was the Velmora Bridge rebuilt in 1921?", "numbers"),
    ("What was Orvel's revenue in 1998?", "What was Orvel's revenue in 1999?", "numbers"),
    ("Does the Kessler drive use two cores?", "Does the Kessler drive use three cores?", "numbers"),
    ("Which city hosted the Tamsin Games?", "Which city did not host the Tamsin Games?", "negated"),
    ("Why didn't the Orsk ferry sail?", "Why did the Orsk ferry sail?", "negated"),
    ("Who founded Tarsk Mills?", "Who founded Orvel Mills?", "name"),
    ("What does the XR-7 weigh?", "What does the XR-9 weigh?", "name"),
    ("What does the Zentrak Z4 weigh?", "What does the Zentrak Z6 weigh?", "name"),
    ("Who invented the Halsted loom?", "When was the Halsted loom invented?", "person against a time"),
    ("How many crew did the Orlaith sink with?", "Where did the Orlaith sink?", "quantity against a place"),
    ("Where is the Thessaly Rook kept?", "What material is the Thessaly Rook carved from?",
     "place against a material"),
    ("Who was the third mayor of Calloway?", "Who was the first mayor of Calloway?", "ordinals"),
    ("How wide is the Gildersleeve's second telescope?", "How wide is the Gildersleeve's main telescope?",
     "ordinals"),
    ("What is the lowest value on the Osterholt scale?",
     "What is the highest value on the Osterholt scale?", "opposite ends"),
    ("What is the top speed of the Calder scooter?", "How much does the Calder scooter weigh?",
     "measure different things"),
    ("Where is the Trellis head office today?", "Where was the Trellis head office?", "present"),
    ("When was the Corriwell Bridge built?", "When was the Marrowgate Bridge in Dunhallow built?",
     "name"),
    ("Who is the author of redis-py?", "who is the author of redis-llm?", "name"),
])
def test_near_misses_fail_the_text_checks_with_a_reason(asked, reviewed, why):
    reason = mismatch(asked, reviewed)
    assert reason is not None and why in reason
    assert mismatch(reviewed, asked) is not None


def test_names_at_the_start_of_a_question_count_but_question_words_do_not():
    assert terms("Velmora Bridge: when was it built?").names == ("velmora", "bridge")
    assert terms("What is the capital of Zarvonia?").names == ("zarvonia",)
    assert terms("Describe the NASA probe").names == ("nasa",)


def test_number_words_and_digits_agree():
    assert terms("Twelve sailors and 1,200 crates").numbers == {"12", "1200"}
    # A capitalised number or ordinal is counted, not taken for a name.
    assert terms("Twelve sailors and 1,200 crates").names == ()
    assert terms("First, who built Orsk?").names == ("orsk",)
    assert terms("Who was the 2nd mayor?").ordinals == {"#2"}


def test_masking_replaces_each_run_of_shared_names_once():
    assert mask("When was the Velmora Bridge built?", {"velmora", "bridge"}) == "When was the X built?"
    assert mask("Velmora's bridge: who designed it?", {"velmora"}) == "X bridge: who designed it?"
    assert mask("When was the Marrowgate Bridge in Dunhallow built?",
                {"marrowgate", "bridge", "dunhallow"}) == "When was the X built?"


def test_normalize_ignores_case_punctuation_and_spacing():
    assert normalize("  What IS  the capital of Zarvonia?? ") == "what is the capital of zarvonia"


def _fake_embed(similarity: float):
    """An embedder whose two vectors have exactly the given cosine similarity."""
    def embed(texts):
        assert len(texts) == 2
        angle = np.arccos(similarity)
        return [np.array([1.0, 0.0], dtype=np.float32),
                np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)]
    return embed


def test_the_embedding_check_refuses_below_its_threshold_and_passes_above():
    asked, reviewed = "When was the Velmora Bridge built?", "When was the Velmora Bridge widened?"
    assert "different things" in mismatch(asked, reviewed, _fake_embed(0.3), 0.5)
    assert mismatch(asked, reviewed, _fake_embed(0.7), 0.5) is None
    # A threshold of 0 turns the embedding check off.
    assert mismatch(asked, reviewed, _fake_embed(0.1), 0.0) is None


def test_exact_repeats_never_reach_the_embedder():
    def embed(texts):
        raise AssertionError("embedded an exact repeat")
    assert mismatch("Who built it?", "who built it", embed, 0.9) is None


def test_text_checks_run_before_the_embedder():
    def embed(texts):
        raise AssertionError("embedded a question the text checks refuse")
    assert mismatch("Who founded Tarsk?", "Who founded Orvel?", embed, 0.5) is not None
