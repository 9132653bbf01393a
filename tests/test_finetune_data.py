"""The data side of `elm-train finetune`: reading records, telling their format, quarantining bad ones, the chat
template, and tokenized examples with their loss masks and truncation."""
from __future__ import annotations

import gzip
import json

import pytest

from model.chat import CHAT_TEMPLATE, SEPARATOR, render
from model.finetune.examples import (PreferenceExample, SFTExample, tokenize_all, tokenize_preference,
                                     tokenize_sft)
from model.finetune.records import (Chat, DataError, Message, PlainText, Preference, PromptCompletion, Quarantine,
                                    Rejected, load, parse, read_records)

TEXT = {"text": "The heron waits in the shallows."}
PROMPT_COMPLETION = {"prompt": "Question: what is two plus two?\nAnswer:", "completion": " Four, of course."}
CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Name a bird."},
                     {"role": "assistant", "content": "A heron."},
                     {"role": "user", "content": "Another?"},
                     {"role": "assistant", "content": "A wren, wörld 😀."}]}
PREFERENCE = {"prompt": "Say hello.", "chosen": " Hello there!", "rejected": " No."}
ULTRAFEEDBACK = {"prompt": "Name a bird.", "prompt_id": "abc123", "score_chosen": 8.0, "score_rejected": 3.0,
                 "chosen": [{"role": "user", "content": "Name a bird."}, {"role": "assistant", "content": "A heron."}],
                 "rejected": [{"role": "user", "content": "Name a bird."}, {"role": "assistant", "content": "Fish."}]}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def decode(tokenizer, ids):
    return tokenizer.decode([i for i in ids if i != tokenizer.eos_id])


def trained_runs(example: SFTExample) -> list[list[int]]:
    runs, run = [], []
    for token, trained in zip(example.input_ids, example.trained):
        if trained:
            run.append(token)
        elif run:
            runs, run = runs + [run], []
    return runs + ([run] if run else [])


# Formats.

def test_each_format_is_parsed_to_its_normalised_form():
    assert parse(("a:1", TEXT)) == PlainText("a:1", TEXT["text"])
    assert parse(("a:2", PROMPT_COMPLETION)) == PromptCompletion("a:2", PROMPT_COMPLETION["prompt"],
                                                                 PROMPT_COMPLETION["completion"])
    chat = parse(("a:3", CHAT))
    assert isinstance(chat, Chat) and chat.train_from == 0
    assert chat.messages[2] == Message("assistant", "A heron.")
    assert parse(("a:4", PREFERENCE)) == Preference("a:4", "Say hello.", " Hello there!", " No.")


def test_conversational_prompt_completion_trains_only_the_completion_messages():
    record = {"prompt": CHAT["messages"][:4], "completion": CHAT["messages"][4:]}
    parsed = parse(("a:1", record))
    assert isinstance(parsed, Chat) and parsed.train_from == 4 and len(parsed.messages) == 5


def test_ultrafeedback_layout_splits_off_the_shared_prompt():
    parsed = parse(("uf:1", ULTRAFEEDBACK))
    assert parsed == Preference("uf:1", (Message("user", "Name a bird."),), (Message("assistant", "A heron."),),
                                (Message("assistant", "Fish."),))


def test_preference_with_a_message_prompt_and_string_replies_answers_as_assistant():
    parsed = parse(("p:1", {"prompt": CHAT["messages"][:2], "chosen": "Heron.", "rejected": "Fish."}))
    assert parsed.prompt == (Message("system", "Be brief."), Message("user", "Name a bird."))
    assert parsed.chosen == (Message("assistant", "Heron."),)


@pytest.mark.parametrize("value, kind, reason", [
    ([1, 2], "not an object", "not an object but list"),
    ({"title": "x"}, "unknown format", "unknown format: fields ['title']"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "invalid chat", "role 'tool' is not one of"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "invalid chat", "no assistant message"),
    ({"messages": [{"role": "assistant", "content": 3}]}, "invalid chat", "'content' must be a string, not int"),
    ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}, "invalid prompt_completion",
     "must both be strings or both message lists"),
    ({**ULTRAFEEDBACK, "prompt": "Something else."}, "invalid preference", "'prompt' is not the last user message"),
    ({"prompt": "q", "chosen": " yes", "rejected": "yes "}, "identical preference", "the pair prefers nothing"),
    ({**ULTRAFEEDBACK, "rejected": ULTRAFEEDBACK["chosen"]}, "identical preference", "'chosen' and 'rejected' are "
                                                                                       "the same"),
])
def test_a_malformed_record_is_rejected_with_its_reason(value, kind, reason):
    rejected = parse(("f.jsonl:7", value))
    assert isinstance(rejected, Rejected) and rejected.where == "f.jsonl:7" and rejected.kind == kind
    assert reason in rejected.reason


# Reading sources.

def test_every_file_kind_reads_records_with_their_location(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [TEXT, PROMPT_COMPLETION, CHAT]
    write_jsonl(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.json").write_text(json.dumps(rows, indent=2))
    write_jsonl(tmp_path / "d.json", rows)
    pq.write_table(pa.Table.from_struct_array(pa.array(rows)), tmp_path / "e.parquet")  # columns of all rows
    for name, where in [("a.jsonl", "a.jsonl:2"), ("b.jsonl.gz", "b.jsonl.gz:2"), ("c.json", "c.json:row 1"),
                        ("d.json", "d.json:2"), ("e.parquet", "e.parquet:row 1")]:
        records = list(read_records(str(tmp_path / name)))
        assert [type(parse(r)) for r in records] == [PlainText, PromptCompletion, Chat], name
        assert records[1][0] == str(tmp_path / where)


def test_a_folder_reads_its_files_in_name_order(tmp_path):
    write_jsonl(tmp_path / "2.jsonl", [PROMPT_COMPLETION])
    write_jsonl(tmp_path / "1.jsonl", [TEXT])
    (tmp_path / "notes.txt").write_text("not data")
    assert [where for where, _ in read_records(str(tmp_path))] == [f"{tmp_path}/1.jsonl:1", f"{tmp_path}/2.jsonl:1"]


def test_a_saved_dataset_folder_reads_its_train_split_or_the_named_one(tmp_path):
    import datasets
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list([ULTRAFEEDBACK, ULTRAFEEDBACK]),
                                   "test": datasets.Dataset.from_list([{**ULTRAFEEDBACK, "prompt_id": "t"}])})
    splits.save_to_disk(str(tmp_path / "uf"))
    examples, quarantine = load(str(tmp_path / "uf"), "preference")
    assert len(examples) == 2 and quarantine.rejected == [] and examples[1].where == f"{tmp_path}/uf:row 1"
    [(where, value)] = read_records(f"{tmp_path}/uf@test")
    assert where == f"{tmp_path}/uf@test:row 0" and value["prompt_id"] == "t"
    with pytest.raises(DataError, match="no split 'dev'; it has train, test"):
        list(read_records(f"{tmp_path}/uf@dev"))


def test_a_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        list(read_records(str(tmp_path / "nope.jsonl")))


def test_a_hub_dataset_that_cannot_be_loaded_is_a_clear_error():
    import datasets
    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("the Hub is not set offline here; a lookup could wait on the network")
    with pytest.raises(DataError, match="no-such-user/no-such-data.*could not be loaded"):
        list(read_records("no-such-user/no-such-data@train"))


# Quarantine.

def test_bad_records_are_quarantined_with_line_and_reason(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [TEXT, CHAT, '{"text": "unclosed', PROMPT_COMPLETION,
                                                {"title": "x"}, TEXT])
    examples, quarantine = load(str(path), "sft")
    assert len(examples) == 4 and quarantine.seen == 6
    assert [(r.where, r.kind) for r in quarantine.rejected] == [(f"{path}:3", "not JSON"),
                                                                 (f"{path}:5", "unknown format")]
    assert quarantine.rejected[0].reason.startswith("not JSON: ")
    assert quarantine.counts == {"not JSON": 1, "unknown format": 1} and len(quarantine) == 2
    lines = [json.loads(line) for line in quarantine.write(tmp_path / "q.jsonl").read_text().splitlines()]
    assert lines[0] == {"where": f"{path}:3", "reason": quarantine.rejected[0].reason, "excerpt": '{"text": "unclosed'}
    assert lines[1]["excerpt"] == '{"title": "x"}'


def test_text_that_is_not_unicode_is_quarantined_not_raised(tokenizer, tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "cut \xff byte"}\n{"text": "lone \\ud800"}\n{"text": "ok"}\n')
    parsed, quarantine = load(str(path))
    examples = tokenize_all(parsed, tokenizer, quarantine, max_length=64)
    assert len(examples) == 2
    assert [(r.where, r.reason) for r in quarantine.rejected] == [
        (f"{path}:2", "not JSON: invalid UTF-8 at byte 14"),
        (f"{path}:3", "text is not valid Unicode (surrogates not allowed at character 5)")]
    written = quarantine.write(tmp_path / "q.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(written[1])["excerpt"] == r'{"text": "lone \ud800"}'  # escaped, so the file stays UTF-8


def test_a_source_mostly_bad_is_refused_naming_its_first_bad_record(tmp_path):
    path = write_jsonl(tmp_path / "mostly.jsonl", [TEXT, "oops", {"title": "x"}, "[1"])
    with pytest.raises(DataError, match=rf"3 of 4 records are bad .*first is {path}:2: not JSON"):
        load(str(path))


def test_an_empty_source_is_refused(tmp_path):
    with pytest.raises(DataError, match="no records"):
        load(str(write_jsonl(tmp_path / "empty.jsonl", [])))


def test_sft_quarantines_preference_records_pointing_to_dpo(tmp_path):
    _, quarantine = load(str(write_jsonl(tmp_path / "mix.jsonl", [TEXT, CHAT, PREFERENCE])), "sft")
    [rejected] = quarantine.rejected
    assert rejected.where.endswith("mix.jsonl:3") and "--method dpo or --method rso" in rejected.reason


def test_preference_training_quarantines_other_formats_saying_what_it_needs(tmp_path):
    _, quarantine = load(str(write_jsonl(tmp_path / "pref.jsonl", [PREFERENCE, ULTRAFEEDBACK, CHAT])), "preference")
    [rejected] = quarantine.rejected
    assert rejected.reason.startswith("a chat record: preference training") and "'chosen'" in rejected.reason


def test_parquet_columns_absent_from_a_row_do_not_change_its_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_struct_array(pa.array([TEXT, PROMPT_COMPLETION])), tmp_path / "mixed.parquet")
    examples, _ = load(str(tmp_path / "mixed.parquet"))
    assert [type(e) for e in examples] == [PlainText, PromptCompletion]


# The chat template.

CONVERSATIONS = [CHAT["messages"], CHAT["messages"][1:2], [{"role": "user", "content": "  spaced \n"}], []]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("generation", [False, True])
def test_render_equals_the_jinja_template_as_transformers_renders_it(messages, generation):
    from transformers.utils.chat_template_utils import render_jinja_template
    [[expected], _] = render_jinja_template([messages], chat_template=CHAT_TEMPLATE, eos_token="</s>",
                                            add_generation_prompt=generation)
    assert render(messages, "</s>", generation) == expected


def test_the_layout_is_openelm_instructs():
    assert render(CHAT["messages"][1:3], add_generation_prompt=False) == \
        "<|user|>\nName a bird.</s>\n<|assistant|>\nA heron.</s>\n"
    assert render(CHAT["messages"][1:2], add_generation_prompt=True) == "<|user|>\nName a bird.</s>\n<|assistant|>\n"


def test_an_unknown_role_raises_in_python_and_in_jinja():
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        render([{"role": "tool", "content": "x"}])
    with pytest.raises(TemplateError, match="Unknown role tool"):
        render_jinja_template([[{"role": "tool", "content": "x"}]], chat_template=CHAT_TEMPLATE, eos_token="</s>")


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer, tmp_path_factory):
    """transformers' own tokenizer for the same model, with the template, loaded offline from a folder."""
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp("hf-tokenizer")
    (folder / "tokenizer.model").write_bytes(tokenizer.model_bytes)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True, "chat_template": CHAT_TEMPLATE}))
    return AutoTokenizer.from_pretrained(str(folder))


def test_chat_example_ids_are_the_tokens_of_the_template_as_transformers_applies_it(tokenizer, hf_tokenizer):
    assert hf_tokenizer.apply_chat_template(CHAT["messages"], tokenize=False) == render(CHAT["messages"])
    example = tokenize_sft(parse(("c:1", CHAT)), tokenizer, max_length=1024)
    hf_ids = hf_tokenizer.apply_chat_template(CHAT["messages"], tokenize=True, return_dict=False)
    # the template ends with a line break after the last EOS; training stops at the EOS
    assert [tokenizer.bos_id] + hf_ids == example.input_ids + tokenizer.sp.encode(SEPARATOR)


# SFT examples.

def test_plain_text_trains_every_token_after_bos(tokenizer):
    example = tokenize_sft(parse(("t:1", TEXT)), tokenizer, max_length=1024)
    assert example.input_ids[0] == tokenizer.bos_id and example.input_ids[-1] == tokenizer.eos_id
    assert example.trained == [False] + [True] * (len(example.input_ids) - 1)
    assert decode(tokenizer, example.input_ids) == TEXT["text"]


@pytest.mark.parametrize("prompt, completion", [
    ("Question: what is two plus two?\nAnswer:", " Four, of course."),
    ("Translate to French: ", "Bonjour"),  # the completion's first token takes the prompt's trailing space
    ("Say it:", "𝔘 is a byte-fallback letter"),
])
def test_prompt_completion_trains_exactly_the_completion_and_eos(tokenizer, prompt, completion):
    example = tokenize_sft(PromptCompletion("p:1", prompt, completion), tokenizer, max_length=1024)
    [run] = trained_runs(example)
    assert run[-1] == tokenizer.eos_id and example.trained[-1]
    assert decode(tokenizer, run).strip() == completion.strip()
    assert tokenizer.decode(example.input_ids) == prompt + completion
    untrained = [t for t, trained in zip(example.input_ids, example.trained) if not trained]
    assert prompt.startswith(tokenizer.decode(untrained))


def test_a_token_straddling_prompt_and_completion_is_trained(tokenizer):
    example = tokenize_sft(PromptCompletion("p:1", "Continue: the heron", "s wait"), tokenizer, max_length=1024)
    [run] = trained_runs(example)
    assert decode(tokenizer, run) == "ons wait"  # "ons" is one token, and the completion is what brings it about
    assert tokenizer.decode(example.input_ids) == "Continue: the herons wait"


def test_chat_trains_exactly_the_assistant_contents_and_their_eos(tokenizer):
    example = tokenize_sft(parse(("c:1", CHAT)), tokenizer, max_length=1024)
    runs = trained_runs(example)
    assert [decode(tokenizer, run) for run in runs] == ["A heron.", "A wren, wörld 😀."]
    assert all(run[-1] == tokenizer.eos_id for run in runs)
    untrained = tokenizer.decode([t for t, trained in zip(example.input_ids, example.trained) if not trained])
    assert "Name a bird." in untrained and "<|assistant|>" in untrained and "heron" not in untrained


def test_conversational_completion_does_not_train_assistant_turns_of_the_prompt(tokenizer):
    record = {"prompt": CHAT["messages"][:4], "completion": CHAT["messages"][4:]}
    example = tokenize_sft(parse(("c:1", record)), tokenizer, max_length=1024)
    assert [decode(tokenizer, run) for run in trained_runs(example)] == ["A wren, wörld 😀."]


def test_sft_cuts_on_the_right_and_flags_it(tokenizer):
    full = tokenize_sft(parse(("t:1", TEXT)), tokenizer, max_length=1024)
    cut = tokenize_sft(parse(("t:1", TEXT)), tokenizer, max_length=5)
    assert cut.input_ids == full.input_ids[:5] and cut.trained == full.trained[:5]
    assert cut.truncated and not full.truncated


def test_an_example_with_no_trained_token_left_is_quarantined(tokenizer, tmp_path):
    long_prompt = PromptCompletion("p.jsonl:1", "word " * 50, "answer")
    rejected = tokenize_sft(long_prompt, tokenizer, max_length=20)
    assert isinstance(rejected, Rejected) and rejected.reason == "no completion token within max_length 20"
    quarantine = Quarantine("p.jsonl", seen=3)
    kept = tokenize_all([long_prompt, PlainText("p.jsonl:2", "short"), PlainText("p.jsonl:3", "also short")],
                        tokenizer, quarantine, max_length=20)
    assert len(kept) == 2 and [r.where for r in quarantine.rejected] == ["p.jsonl:1"]


# Preference examples.

def test_string_preference_shares_the_prompt_and_ends_each_completion_with_eos(tokenizer):
    example = tokenize_preference(parse(("p:1", PREFERENCE)), tokenizer, max_length=1024, max_prompt_length=512)
    assert isinstance(example, PreferenceExample) and example.prompt[0] == tokenizer.bos_id
    assert tokenizer.decode(example.prompt) == "Say hello."
    assert decode(tokenizer, example.chosen).strip() == "Hello there!" and example.chosen[-1] == tokenizer.eos_id
    assert decode(tokenizer, example.rejected).strip() == "No." and example.rejected[-1] == tokenizer.eos_id


def test_ultrafeedback_prompt_ends_with_the_reply_header(tokenizer, hf_tokenizer):
    example = tokenize_preference(parse(("uf:1", ULTRAFEEDBACK)), tokenizer, max_length=1024, max_prompt_length=512)
    prompt = [{"role": "user", "content": "Name a bird."}]
    assert example.prompt == [tokenizer.bos_id] + hf_tokenizer.apply_chat_template(
        prompt, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert decode(tokenizer, example.chosen) == "A heron." and decode(tokenizer, example.rejected) == "Fish."


def test_preference_cuts_the_prompt_on_the_left_then_completions_on_the_right(tokenizer):
    record = Preference("p:1", "one two three four five six seven eight nine ten", " alpha beta gamma delta",
                        " yes")
    full = tokenize_preference(record, tokenizer, max_length=1024, max_prompt_length=512)
    cut = tokenize_preference(record, tokenizer, max_length=10, max_prompt_length=6)
    assert cut.prompt == [tokenizer.bos_id] + full.prompt[-5:]
    assert cut.chosen == full.chosen[:4] and cut.rejected == full.rejected[:4] == full.rejected
    assert cut.truncated and not full.truncated


def test_a_preference_with_no_room_for_completions_is_rejected(tokenizer):
    record = Preference("p:1", "one two three four five six seven eight nine ten", " yes", " no")
    rejected = tokenize_preference(record, tokenizer, max_length=6, max_prompt_length=6)
    assert isinstance(rejected, Rejected) and rejected.reason == "no completion token within max_length 6"
