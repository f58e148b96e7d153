import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from granite_train.text.vocab import BLANK_ID, VOCAB_SIZE, CharVocab, OOVError, OOVPolicy

VOCAB = CharVocab()
SYMBOLS = [VOCAB.id_to_char(i) for i in range(1, VOCAB_SIZE)]
non_blank_ids = st.integers(min_value=1, max_value=VOCAB_SIZE - 1)


def test_layout_matches_granite_ctc_head():
    assert len(VOCAB) == VOCAB_SIZE == 348
    assert BLANK_ID == 0
    assert len(set(SYMBOLS)) == VOCAB_SIZE - 1
    assert VOCAB.char_to_id("A") == 65
    assert VOCAB.char_to_id("\xff") == 255
    assert VOCAB.char_to_id("ァ") == 256  # U+30A1
    assert VOCAB.char_to_id("ア") == 257  # U+30A2
    assert VOCAB.char_to_id("ヴ") == 256 + 0x30F4 - 0x30A1
    assert VOCAB.char_to_id("ー") == 347  # U+30FC, the last id


@pytest.mark.parametrize("char", ["\x00", "あ", "ヽ", "\u30a0", "€", "漢", "😀", "Ā"])
def test_characters_outside_the_vocabulary(char):
    assert char not in VOCAB
    with pytest.raises(KeyError):
        VOCAB.char_to_id(char)


def test_contains_rejects_non_strings_and_multi_char_strings():
    assert 65 not in VOCAB
    assert "ab" not in VOCAB
    assert "a" in VOCAB


def test_every_symbol_round_trips():
    for i in range(1, VOCAB_SIZE):
        char = VOCAB.id_to_char(i)
        assert len(char) == 1
        assert VOCAB.encode(char) == [i], char
        assert VOCAB.decode([i]) == char


@given(st.text(alphabet=st.sampled_from(SYMBOLS), max_size=50))
def test_in_vocab_text_round_trips(text):
    assert VOCAB.decode(VOCAB.encode(text)) == text


@given(st.lists(non_blank_ids, max_size=50))
def test_ids_round_trip(ids):
    assert VOCAB.encode(VOCAB.decode(ids)) == ids


def test_nfc_maps_decomposed_characters_into_the_vocabulary():
    assert VOCAB.encode("cafe\u0301") == [ord(c) for c in "café"]
    assert VOCAB.encode("カ\u3099") == [VOCAB.char_to_id("ガ")]
    assert "e\u0301" in VOCAB


def test_drop_policy_leaves_unknown_characters_out_and_counts_them():
    vocab = CharVocab("drop")
    assert vocab.encode("a€b€ あ") == [97, 98, 32]
    assert vocab.oov_counts == {"€": 2, "あ": 1}
    vocab.encode("€")
    assert vocab.oov_counts["€"] == 3
    vocab.reset_counts()
    assert not vocab.oov_counts


def test_replace_policy_puts_the_replacement_in_place():
    vocab = CharVocab(OOVPolicy.REPLACE, replacement="?")
    assert vocab.decode(vocab.encode("a€b漢")) == "a?b?"
    assert vocab.oov_counts == {"€": 1, "漢": 1}
    assert CharVocab("replace").encode("a€b") == [97, 32, 98]  # default replacement: space


def test_reject_policy_names_every_offending_character():
    vocab = CharVocab("reject")
    with pytest.raises(OOVError) as info:
        vocab.encode("x€y漢€")
    assert info.value.chars == ("€", "漢")
    assert "U+20AC" in str(info.value) and "漢" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert vocab.oov_counts == {"€": 2, "漢": 1}  # counted even though the text was rejected
    assert vocab.encode("ok ア") == [111, 107, 32, 257]


@pytest.mark.parametrize("replacement", ["€", "", "ab", "あ"])
def test_replacement_must_be_one_in_vocab_character(replacement):
    with pytest.raises(ValueError, match="replacement"):
        CharVocab("replace", replacement=replacement)


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError):
        CharVocab("ignore")


def test_decode_skips_blanks_but_does_not_collapse():
    assert VOCAB.decode([0, 97, 97, 0, 98]) == "aab"


def test_ctc_greedy_decode_collapses_repeats_before_dropping_blanks():
    a, b = ord("a"), ord("b")
    assert VOCAB.ctc_greedy_decode([0, a, a, 0, a, b, b, 0, 0]) == "aab"
    assert VOCAB.ctc_greedy_decode([a, a, a]) == "a"
    assert VOCAB.ctc_greedy_decode([0, 0]) == ""
    assert VOCAB.ctc_greedy_decode([]) == ""


@given(
    st.lists(st.tuples(non_blank_ids, st.integers(1, 3), st.integers(0, 2)), max_size=20),
    st.integers(0, 2),
)
def test_ctc_greedy_decode_inverts_any_alignment(labels, leading_blanks):
    """Stretch each label over 1-3 frames with 0-2 blanks after it (at least one blank between
    equal neighbours, as CTC requires); greedy decoding must give the labels back."""
    path = [BLANK_ID] * leading_blanks
    for k, (label, repeats, blanks) in enumerate(labels):
        if k and labels[k - 1][0] == label and path[-1] != BLANK_ID:
            path.append(BLANK_ID)
        path += [label] * repeats + [BLANK_ID] * blanks
    assert VOCAB.ctc_greedy_decode(path) == VOCAB.decode(label for label, _, _ in labels)


def test_decode_accepts_numpy_and_torch_integers():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    assert VOCAB.decode(np.array([0, 72, 105])) == "Hi"
    assert VOCAB.ctc_greedy_decode(torch.tensor([72, 72, 0, 105])) == "Hi"


@pytest.mark.parametrize("bad", [[VOCAB_SIZE], [-1], [10_000]])
def test_out_of_range_ids_raise(bad):
    with pytest.raises(ValueError, match="out of range"):
        VOCAB.decode(bad)
    with pytest.raises(ValueError, match="out of range"):
        VOCAB.ctc_greedy_decode(bad)


def test_non_integer_ids_raise():
    with pytest.raises(TypeError):
        VOCAB.decode([65.0])


def test_blank_has_no_character():
    with pytest.raises(ValueError, match="blank"):
        VOCAB.id_to_char(BLANK_ID)


def test_pickles_with_its_policy():
    vocab = pickle.loads(pickle.dumps(CharVocab("replace", replacement="_")))
    assert vocab.encode("a€") == [97, 95]
