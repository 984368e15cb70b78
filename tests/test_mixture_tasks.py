"""MIXTURE task formats, the extractive writer and the noise operators."""

import numpy as np
import pytest

from lm_mixup_assets.lib import mixture_llm as L
from lm_mixup_assets.lib import mixture_noise as N
from lm_mixup_assets.lib import mixture_tasks as M

PARA = {
    "title": "Anarchism",
    "section": "History",
    "text": (
        "The French renaissance political philosopher Étienne de La Boétie wrote in his most famous work the "
        "Discourse on Voluntary Servitude what some historians consider an important anarchist precedent. "
        "The radical Protestant Christian Gerrard Winstanley and his group the Diggers are cited by various "
        'authors as proposing anarchist social measures in the 17th century in England. The term "anarchist" '
        "first entered the English language in 1642, during the English Civil War, as a term of abuse, used by "
        "Royalists against their Roundhead opponents. By the time of the French Revolution some, such as the "
        "Enragés, began to use the term positively, in opposition to Jacobin centralisation of power, seeing "
        '"revolutionary government" as oxymoronic. By the turn of the 19th century, the English word '
        '"anarchism" had lost its initial negative connotation.'
    ),
}
LEAD = {
    "title": "Alberta",
    "section": "Introduction",
    "text": (
        "Alberta is a western province of Canada. With an estimated population of 4,196,457 as of July 1, 2015, "
        "it is Canada's fourth-most populous province. Its capital is Edmonton, while Calgary is its largest city. "
        "Alberta became a province on September 1, 1905."
    ),
}
NO_SALIENT = {
    "title": "Colour",
    "section": "Perception",
    "text": "colour is seen by the eye and named by the mind. it changes with light and with the viewer.",
}


@pytest.mark.parametrize("task", M.TASK_TYPES)
@pytest.mark.parametrize("para", [PARA, LEAD], ids=["history", "lead"])
def test_extractive_targets_are_valid(task, para):
    for seed in range(10):
        out = M.write_extractive_target(task, para, np.random.default_rng(seed))
        assert out is not None, (task, seed)
        assert M.validate_target(task, out) == [], out
        assert M.answer_pattern_ok(task, out)
        # deterministic for a seed
        assert out == M.write_extractive_target(task, para, np.random.default_rng(seed))


def test_qa_reads_naturally():
    lead = M.write_extractive_target("qa", LEAD, 0)
    assert lead.startswith("Q: What is Alberta?\nA: Alberta is a western province of Canada.")
    hist = M.write_extractive_target("qa", PARA, 0)
    assert "Anarchism" in hist.splitlines()[0] and "history" in hist.splitlines()[0]
    assert hist.splitlines()[1].startswith("A: The French renaissance")


def test_mcq_answer_letter_points_at_blanked_token():
    for seed in range(20):
        out = M.write_extractive_target("mcq", PARA, seed)
        lines = out.splitlines()
        options = {ln[0]: ln[3:] for ln in lines[1:5]}
        letter = lines[-1].split(":")[1].strip()
        answer = options[letter]
        cloze = lines[0].split('"', 1)[1].rsplit('"', 1)[0]
        assert "____" in cloze
        # the correct option restores a sentence of the paragraph, the others do not
        assert cloze.replace("____", answer) in PARA["text"]
        for other in set(options.values()) - {answer}:
            assert cloze.replace("____", other) not in PARA["text"]
        assert len(set(options.values())) == 4


def test_mcq_letters_are_shuffled_across_seeds():
    letters = {M.write_extractive_target("mcq", PARA, s).splitlines()[-1] for s in range(30)}
    assert len(letters) >= 3


def test_mcq_none_without_salient_tokens():
    assert M.write_extractive_target("mcq", NO_SALIENT, 0) is None


def test_tfq_true_and_false():
    true = M.write_extractive_target("tfq", PARA, 1, truth=True)
    assert true.endswith("Answer: True")
    statement = true.splitlines()[0].split(": ", 2)[-1]
    assert statement in PARA["text"]

    false = M.write_extractive_target("tfq", PARA, 1, truth=False)
    assert false.endswith("Answer: False")
    statement = false.splitlines()[0].split(": ", 2)[-1]
    assert statement not in PARA["text"]
    assert M.validate_target("tfq", false) == []

    labels = {M.write_extractive_target("tfq", PARA, s).splitlines()[-1] for s in range(20)}
    assert labels == {"Answer: True", "Answer: False"}


@pytest.mark.parametrize(
    "sentence,method",
    [
        ("Aldous Huxley was born in Godalming, Surrey, England, in 1894.", "number"),
        ("The balance between potassium and sodium is maintained by ion pumps.", "negation"),
        ("Achilles' armor was the object of a feud between Odysseus and the hero Ajax.", None),
    ],
)
def test_falsify_sentence_changes_it(sentence, method):
    seen = set()
    for seed in range(10):
        out = M.falsify_sentence(sentence, seed)
        assert out is not None and out[0] != sentence
        seen.add(out[1])
    if method:
        assert method in seen


def test_falsify_does_not_swap_list_members():
    sentence = "They rode in parades in New York, Chicago, and Los Angeles."
    for seed in range(10):
        out = M.falsify_sentence(sentence, seed)
        assert out is None or out[1] != "entity_swap"


def test_cs_and_paragraph():
    cs = M.write_extractive_target("cs", PARA, 0)
    assert cs.startswith("C: Anarchism: History\nS: The French renaissance")
    assert M.write_extractive_target("cs", LEAD, 0).startswith("C: Alberta\nS: Alberta is a western province")
    para = M.write_extractive_target("paragraph", PARA, 0)
    assert para.startswith("The French renaissance") and "Q:" not in para


@pytest.mark.parametrize(
    "task,text,needle",
    [
        ("qa", "What is it?\nA: x", "must start with 'Q:'"),
        ("qa", "Q: What is it?", "missing an 'A:' line"),
        ("qa", "Q: What is it?\nA:   ", "empty answer"),
        ("qa", "Q: \nA: yes", "empty question"),
        ("qa", "Q: a?\nA: b\nQ: c?\nA: d", "more than one"),
        ("mcq", "Q: Pick one.\nA) x\nB) y\nC) z\nAnswer: A", "four options"),
        ("mcq", "Q: Pick one.\nA) x\nB) y\nC) z\nD) w\nAnswer: E", "A-D"),
        ("mcq", "Q: Pick one.\nA) x\nB) y\nC) z\nD) w", "missing final 'Answer"),
        ("mcq", "A) x\nB) y\nC) z\nD) w\nAnswer: A", "missing question"),
        ("mcq", "Q: Pick.\nA) x\nB) x\nC) z\nD) w\nAnswer: A", "not distinct"),
        ("tfq", "Q: The sky is green.\nAnswer: Maybe", "True or False"),
        ("tfq", "Q: The sky is green.", "missing final 'Answer"),
        ("tfq", "Answer: True", "missing statement"),
        ("cs", "S: statement\nC: cat", "must start with 'C:"),
        ("cs", "C: Cat\nS: ", "empty statement"),
        ("cs", "C: Cat", "missing an 'S:"),
        ("paragraph", "Q: What?\nA: This.", "scaffolding"),
        ("paragraph", "no sentence here", "no complete sentence"),
        ("paragraph", "   ", "empty"),
        ("qa", "<think>x</think><answer>Q: a?\nA: b</answer>", "tags"),
    ],
)
def test_validators_reject_with_reasons(task, text, needle):
    reasons = M.validate_target(task, text)
    assert reasons, text
    assert any(needle in r for r in reasons), reasons


def test_validators_accept_llm_style_samples():
    assert M.validate_target("mcq", "Q: Which?\nA) 1\nB) 2\nC) 3\nD) 4\nAnswer: C) 3") == []
    assert M.validate_target("tfq", "True or false: water boils at 100 C at sea level.\nAnswer: true") == []
    assert M.validate_target("qa", "Q: Why?\nA: Because.\nIt is so.") == []


def test_answer_pattern_ok():
    assert M.answer_pattern_ok("qa", "Q: a\nA: b")
    assert not M.answer_pattern_ok("qa", "a\nb")
    assert M.answer_pattern_ok("mcq", "Q: x\nA) 1 B) 2 C) 3 D) 4\nAnswer: A")
    assert not M.answer_pattern_ok("mcq", "Q: x\nA) 1 B) 2 C) 3\nAnswer: A")
    assert M.answer_pattern_ok("cs", "C: x\nS: y") and not M.answer_pattern_ok("cs", "S: y")
    assert M.answer_pattern_ok("tfq", "x\nAnswer: True") and not M.answer_pattern_ok("tfq", "x")
    assert M.answer_pattern_ok("paragraph", "")
    with pytest.raises(ValueError):
        M.answer_pattern_ok("essay", "x")


OTHER = (
    "Algeria is the largest country in Africa. Its capital is Algiers, on the Mediterranean coast. "
    "Most of the country lies within the Sahara."
)


@pytest.mark.parametrize("name", list(N.NOISE_OPERATORS) + ["cross_topic_merge"])
def test_noise_operator_changes_text_and_is_seeded(name):
    text = PARA["text"]

    def run(seed):
        if name == "cross_topic_merge":
            return N.cross_topic_merge(text, OTHER, np.random.default_rng(seed))
        return N.NOISE_OPERATORS[name](text, np.random.default_rng(seed))

    a, b = run(1), run(1)
    assert a == b
    assert a != text and a.strip()
    assert any(run(seed) != a for seed in range(2, 8))


def test_operator_specifics():
    text = PARA["text"]
    n_sents = len(M.split_sentences(text))
    assert 1 <= len(M.split_sentences(N.drop_sentences(text, 0))) < n_sents
    assert len(N.truncate(text, 0)) < len(text) and text.startswith(N.truncate(text, 0))
    assert len(N.redundant_restatement(text, 0)) > len(text)
    assert sorted(M.split_sentences(N.shuffle_fragments(text, 0))) == sorted(M.split_sentences(text))
    frag = N.split_fragment(text, 0)
    assert frag in text and not text.startswith(frag)
    dropped = N.drop_facts("The war began in 1775 and ended in 1783 in Paris, with 25,000 dead.", 3)
    assert dropped != "The war began in 1775 and ended in 1783 in Paris, with 25,000 dead."
    merged = N.cross_topic_merge(text, OTHER, 0)
    assert any(s in merged for s in M.split_sentences(OTHER))
    assert N.typos("a b c to be.", 0) == "a b c to be."  # nothing of 4+ letters to misspell
    assert N.drop_sentences("One sentence only.", 0) == "One sentence only."


@pytest.mark.parametrize("task", M.TASK_TYPES)
def test_make_variants_distinct(task):
    target = M.write_extractive_target(task, PARA, 0)
    other = M.write_extractive_target(task, LEAD, 0)
    variants = N.make_variants(target, task, np.random.default_rng(5), n=6, others=[other])
    assert len(variants) == 6
    texts = [v for v, _ in variants]
    assert len(set(texts)) == 6 and target not in texts
    ops = set(N.NOISE_OPERATORS) | {"cross_topic_merge", "drop_option", "drop_answer"}
    for _, names in variants:
        assert names and set(names.split("+")) <= ops
        assert 1 <= len(names.split("+")) <= 3
    assert variants == N.make_variants(target, task, np.random.default_rng(5), n=6, others=[other])
    assert variants != N.make_variants(target, task, np.random.default_rng(6), n=6, others=[other])


def test_make_variants_keeps_scaffolding():
    target = M.write_extractive_target("qa", PARA, 0)
    for v, ops in N.make_variants(target, "qa", 1, n=8):
        assert v.startswith(target.splitlines()[0] + "\nA:"), ops


def test_prompts_render():
    p = L.render_writer_prompt("mcq", PARA)
    assert "Anarchism" in p and "History" in p and M.FORMAT_SPECS["mcq"] in p and "ONE" in p
    d = L.render_degrade_prompt("qa", "Q: a?\nA: b.", n=3)
    assert "3 different low-quality" in d and L.VARIANT_SEPARATOR in d
    assert L.parse_degraded_variants("Q: a?\nA:\n###\nQ: a\nA: b\n###\n\n###\nQ: a?\nA: b.", "Q: a?\nA: b.") == [
        "Q: a?\nA:",
        "Q: a\nA: b",
    ]
    user = M.distill_user_turn("cs", ["C: x\nS: y", "C: x\nS: z"])
    assert user.startswith(M.DISTILL_INSTRUCTIONS["cs"]) and user.endswith("C: x\nS: y\n\nC: x\nS: z")
    with pytest.raises(ValueError):
        L.render_writer_prompt("essay", PARA)


@pytest.mark.parametrize("profile,expected_range", [("paper", (2, 20)), ("demo", (2, 6))])
def test_cluster_sizes_are_uniform_over_the_profile_range(profile, expected_range):
    from lm_mixup_assets.config import resolved_settings
    from lm_mixup_assets.lib.settings.mixture import MixtureSettings, VariantsSettings

    lo, hi = 2, resolved_settings(MixtureSettings, profile)[0].max_variants
    assert (lo, hi) == expected_range
    per_target = resolved_settings(VariantsSettings, profile)[0].variants_per_target
    rng = np.random.default_rng(0)
    sizes = np.array([L.draw_cluster_size(rng, per_target, lo, hi) for _ in range(4000)])
    assert sizes.min() == lo and sizes.max() == hi
    counts = np.bincount(sizes, minlength=hi + 1)[lo:]
    assert len(counts) == hi - lo + 1 and (counts > 0).all()
    # uniform: each size about 4000 / (hi - lo + 1) times, mean at the centre of the range
    assert abs(sizes.mean() - (lo + hi) / 2) < 0.3
    assert counts.max() / counts.min() < 1.6


def test_cluster_size_is_capped_by_the_pool_and_validated():
    rng = np.random.default_rng(1)
    assert {L.draw_cluster_size(rng, 4, 2, 20) for _ in range(200)} == {2, 3, 4}
    assert L.draw_cluster_size(rng, 1, 2, 20) == 0  # too few variants: no example
    assert L.draw_cluster_size(rng, 2, 2, 20) == 2
    with pytest.raises(ValueError, match="max_variants <= 20"):
        L.draw_cluster_size(rng, 30, 2, 21)
    with pytest.raises(ValueError):
        L.draw_cluster_size(rng, 30, 1, 5)


def test_cot_prompt_and_parsing():
    prompt = L.render_cot_prompt("qa", ["Q: a?\nA: b", "Q: a\nA: b, c"], "Q: a?\nA: b and c.")
    assert "2 weak versions of one question-answer pair" in prompt
    assert "[1] Q: a?\nA: b\n\n[2] Q: a\nA: b, c" in prompt and '"""\nQ: a?\nA: b and c.\n"""' in prompt
    assert L.parse_cot("  I keep b and add c.  ") == ("I keep b and add c.", None)
    assert L.parse_cot("<think>\nI keep b.\n</think>\n<answer>Q: a?\nA: b</answer>") == ("I keep b.", None)
    assert L.parse_cot("") == ("", "the writer returned no reasoning")
    assert L.parse_cot("<answer>Q: a?</answer>")[1] == "the reasoning contains <think>/<answer> tags"


def test_make_variants_can_be_restricted_to_surface_noise():
    target = M.write_extractive_target("paragraph", PARA, 0)
    other = LEAD["text"]
    out = N.make_variants(target, "paragraph", 3, n=6, others=[other], operators=("typos", "cross_topic_merge"))
    assert len(out) == 6
    assert {op for _, ops in out for op in ops.split("+")} <= {"typos", "cross_topic_merge"}
    assert (
        N.make_variants(target, "paragraph", 3, n=2, operators=("cross_topic_merge",)) == []
    )  # no other topic offered
    with pytest.raises(ValueError, match="unknown noise operators"):
        N.make_variants(target, "paragraph", 3, operators=("shout",))
