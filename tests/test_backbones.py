import pytest
import torch

from edgetune.backbones import SUPPORTED_MODEL_TYPES, Backbone, UnsupportedModelError
from edgetune.families import family_for
from edgetune.modeling import SequenceClassifier, TopModel
from edgetune.tokenization import TextEncoder
from tests.conftest import FAMILIES, build_model


def _batch(vocab: int = 30):
    torch.manual_seed(1)
    ids = torch.randint(5, vocab, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_the_pieces(family):
    model = build_model(family)
    b = Backbone(model)
    assert b.num_layers == 3 and b.hidden_size == 32
    assert b.is_decoder == (family in ("gpt2", "llama", "qwen2", "mistral"))
    assert b.pooling == ("last" if b.is_decoder else "mean")
    assert (b.final_norm is not None) == b.is_decoder
    assert (b.readout_weight() is not None) == b.is_decoder
    if b.is_decoder:
        assert b.readout_weight().shape == (model.config.vocab_size, 32)
    assert len(b.block_param_counts()) == 3 and b.embedding_param_count() > 0


# transformers has no SDPA attention for some families (MPNet, ELECTRA): their eager attention only
ATTENTIONS = [
    (f, a) for f in FAMILIES for a in ("sdpa", "eager") if a == "eager" or family_for(f).attn_implementation == a
]


@pytest.mark.parametrize(("family", "attn"), ATTENTIONS)
def test_blockwise_forward_matches_hugging_face(family, attn):
    from transformers import AutoModel, AutoModelForCausalLM

    model = build_model(family)
    auto = AutoModelForCausalLM if family in ("gpt2", "llama", "qwen2", "mistral") else AutoModel
    model = auto.from_config(model.config, attn_implementation=attn).eval()
    b = Backbone(model)
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hidden = b.embed(ids, mask)
        kwargs = b.block_inputs(hidden, mask)
        for layer in range(b.num_layers):
            hidden = b.run_layers(hidden, mask, layer, layer + 1, block_inputs=kwargs)
            expected = ref[layer + 1]
            if layer == b.num_layers - 1 and b.final_norm is not None:
                hidden_cmp = b.norm(hidden)  # HF applies the final norm to the last hidden state
            else:
                hidden_cmp = hidden
            real = mask.bool()
            assert torch.allclose(hidden_cmp[real], expected[real], atol=1e-5), (family, layer)


@pytest.mark.parametrize("family", FAMILIES)
def test_trunk_plus_top_equals_full_model_at_every_cut(family):
    clf = SequenceClassifier(Backbone(build_model(family)), num_labels=4).eval()
    ids, mask = _batch()
    with torch.no_grad():
        full = clf(ids, mask)
        for cut in range(clf.num_layers + 1):
            top = clf.top(cut)
            assert len(top.blocks) == clf.num_layers - cut
            assert torch.allclose(top(clf.trunk_forward(ids, mask, cut), mask), full, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_top_rebuilds_from_spec_without_the_trunk(family, tmp_path):
    clf = SequenceClassifier(Backbone(build_model(family)), num_labels=4).eval()
    ids, mask = _batch()
    top = clf.detached_top(1)
    top.save(tmp_path)
    rebuilt = TopModel.load(tmp_path).eval()
    with torch.no_grad():
        hidden = clf.trunk_forward(ids, mask, 1)
        assert torch.allclose(rebuilt(hidden, mask), clf(ids, mask), atol=1e-5)
    # training the rebuilt copy leaves the source classifier untouched
    before = clf.head.weight.clone()
    rebuilt.head.weight.data.add_(1.0)
    assert torch.equal(clf.head.weight, before)


def test_unsupported_architecture_lists_supported():
    from transformers import AlbertConfig, AlbertModel

    # ALBERT shares one block's weights across its layers: no family (a cut would split a shared block)
    model = AlbertModel(
        AlbertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            embedding_size=16,
        )
    )
    with pytest.raises(UnsupportedModelError) as err:
        Backbone(model)
    msg = str(err.value)
    assert "albert" in msg
    for t in SUPPORTED_MODEL_TYPES:
        assert t in msg


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_load_from_local_directory_with_encoder(family, tiny_model_dir):
    path = tiny_model_dir(family)
    b = Backbone.from_pretrained(path)
    enc = TextEncoder.from_pretrained(path, max_length=8)
    ids, mask = enc(["apple goal vote the a of and today said new big", "pear"])
    assert ids.shape == (2, 8) and mask[1].sum() < 8 and mask[0].sum() == 8
    assert ids[1, mask[1].sum() :].tolist() == [enc.pad_id] * (8 - mask[1].sum())
    with torch.no_grad():
        out = b.run_layers(b.embed(torch.from_numpy(ids), torch.from_numpy(mask)), torch.from_numpy(mask))
    assert out.shape == (2, 8, 32)


def test_fingerprint_changes_with_weights():
    a = Backbone(build_model("bert", seed=0))
    b = Backbone(build_model("bert", seed=0))
    c = Backbone(build_model("bert", seed=1))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load a model config"):
        Backbone.from_pretrained(tmp_path / "nope")
