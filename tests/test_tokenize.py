import pandas as pd
import pytest

from pipeline_steps.data.tokenize import TemplateEncoder, tokenize_frame
from pipeline_steps.errors import UserError
from pipeline_steps.models.registry import load_tokenizer


@pytest.fixture(scope="module")
def minilm_tok():
    return load_tokenizer({"name": "l6", "source": "embedded:minilm-l6"})


def test_mask_position_and_specials(minilm_tok):
    enc = TemplateEncoder(minilm_tok, "{text_a} It was {mask}.", 32)
    ids, pos = enc.encode("a fine film")
    assert ids[0] == minilm_tok.cls_token_id and ids[-1] == minilm_tok.sep_token_id
    assert ids[pos] == minilm_tok.mask_token_id
    assert minilm_tok.decode(ids[1:pos]) == "a fine film it was"


def test_truncation_keeps_template_and_mask(minilm_tok):
    enc = TemplateEncoder(minilm_tok, "{text_a} ? {mask} , {text_b}", 24)
    ids, pos = enc.encode("word " * 50, "short hypothesis")
    assert len(ids) == 24 and ids[pos] == minilm_tok.mask_token_id
    assert "short hypothesis" in minilm_tok.decode(ids)  # the longest text is cut first


def test_max_length_too_small(minilm_tok):
    with pytest.raises(UserError, match="no room"):
        TemplateEncoder(minilm_tok, "{text_a} this template is long and leaves no room at all {mask}", 12)


def test_tokenize_frame_columns(minilm_tok):
    df = pd.DataFrame({"idx": [3, 4], "text_a": ["good", "bad"], "text_b": ["", ""], "label": [1, 0],
                       "split": ["train", "test"]})
    out = tokenize_frame(df, minilm_tok, "{text_a} It was {mask}.", 16)
    assert list(out.columns) == ["idx", "split", "label", "input_ids", "mask_pos"]
    assert all(row.input_ids[row.mask_pos] == minilm_tok.mask_token_id for row in out.itertuples())


@pytest.mark.parametrize("kind", ["roberta", "t5"])
def test_other_tokenizers(tiny_spec, kind):
    tok = load_tokenizer(tiny_spec(kind))
    enc = TemplateEncoder(tok, "{text_a} It was {mask}.", 32)
    ids, pos = enc.encode("the movie was great")
    if kind == "roberta":
        assert ids[0] == tok.bos_token_id and ids[pos] == tok.mask_token_id
    else:  # T5: sentinel in place of the mask, eos at the end, no mask position
        assert pos == -1 and tok.convert_tokens_to_ids("<extra_id_0>") in ids and ids[-1] == tok.eos_token_id
