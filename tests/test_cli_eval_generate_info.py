"""`qtf-edge eval / generate / info`: output shapes, and bad input as one line + exit 2."""

import json
import shutil

import pytest
from cli_helpers import assert_one_line_error, invoke
from run_factory import make_run

from qtf_edge.cost import list_profiles
from qtf_edge.cost.counts import PARTS
from qtf_edge.data import default_corpus, load_tokenizer, read_corpus
from qtf_edge.generate import generate
from qtf_edge.runs import MODEL_FILE, load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "qtf")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "valid.txt"
    path.write_text("\n".join(read_corpus(default_corpus("valid"))[:3]) + "\n")
    return path



def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("eval", "generate", "info"):
        assert f"  {command} " in result.output


def test_eval_json_has_the_figures(run_dir, data_file):
    result = invoke("eval", run_dir, "--data", data_file, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("nll", "tokens", "words", "bytes", "perplexity_per_token",
                "perplexity_per_word", "bits_per_byte", "params", "routed_fraction", "lines"):
        assert key in report
    assert report["lines"] == 3


def test_eval_prints_a_summary_and_the_per_token_table(run_dir, data_file):
    result = invoke("eval", run_dir, "--data", data_file, "--per-token",
                    "--text", "The castle")
    assert result.exit_code == 0, result.output
    for text in ("perplexity per word", "bits per byte", "quantum fraction",
                 "b0 route", "b1 rank", "\u2423c"):
        assert text in result.stdout


def test_eval_per_token_json_traces_the_first_line(run_dir, data_file):
    result = invoke("eval", run_dir, "--data", data_file, "--per-token", "--json",
                    "--max-tokens", 40)
    report = json.loads(result.stdout)
    assert report["tokens"] == 39
    first_line = data_file.read_text().splitlines()[0]
    assert "".join(r["text"] for r in report["per_token"]).startswith(first_line[:10])


def test_generate_streams_the_same_text_as_the_library(run_dir):
    result = invoke("generate", run_dir, "--prompt", "The castle", "--temperature", 0,
                    "--max-new-tokens", 10)
    assert result.exit_code == 0, result.output
    run = load_run(run_dir)
    expected = generate(run.model, load_tokenizer(run.tokenizer_path), "The castle",
                        max_new_tokens=10, temperature=0)
    assert result.stdout == expected.text + "\n"
    assert result.stderr == ""


def test_generate_json_and_the_truncation_notice(run_dir):
    result = invoke("generate", run_dir, "--prompt", "castle " * 80, "--json",
                    "--max-new-tokens", 4, "--seed", 1, "--top-k", 5, "--top-p", 0.9)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"prompt", "text", "tokens", "truncated"}
    assert report["truncated"] is True and len(report["tokens"]) == 4
    assert "prompt" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_info_json_parts_sum_to_the_total_and_every_profile_is_estimated(run_dir):
    result = invoke("info", run_dir, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    params = info["params"]
    assert sum(params[part] for part in PARTS) == params["total"]
    assert set(info["estimates"]) == set(list_profiles())
    for estimate in info["estimates"].values():
        assert estimate["label"] == "estimated"
        assert estimate["per_query"]["label"] == "estimated"
        assert estimate["per_decoded_token"]["energy_uj"] > 0
    assert info["compression_ratio"] > 1
    assert info["flops"]["per_query"] > info["flops"]["per_decoded_token"] > 0
    # The tiny run's ranks as built: tt_rank on the block layers, tt_embedding_rank on the table.
    config = info["config"]
    assert info["tt_ranks"]["token_embedding.tt"] == [config["tt_embedding_rank"]]
    assert info["tt_ranks"]["blocks.0.ffn.up"] == [config["tt_rank"]]
    assert info["lineage"]["command"] == "tests: untrained tiny model"


def test_info_table_names_every_profile_as_estimated(run_dir):
    result = invoke("info", run_dir)
    assert result.exit_code == 0, result.output
    for profile in list_profiles():
        assert profile in result.stdout
    assert "estimated" in result.stdout and "total" in result.stdout


COMMANDS = [["eval"], ["generate", "--prompt", "hi"], ["info"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_run_folder_is_one_line(command, tmp_path):
    missing = tmp_path / "nope"
    result = invoke(command[0], missing, *command[1:])
    assert_one_line_error(result, str(missing), "not found")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_run_without_its_model_is_one_line(command, run_dir, tmp_path):
    broken = shutil.copytree(run_dir, tmp_path / "run")
    (broken / MODEL_FILE).unlink()
    assert_one_line_error(invoke(command[0], broken, *command[1:]), MODEL_FILE, "missing")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_modified_model_file_is_one_line(command, run_dir, tmp_path):
    broken = shutil.copytree(run_dir, tmp_path / "run")
    data = bytearray((broken / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (broken / MODEL_FILE).write_bytes(bytes(data))
    assert_one_line_error(invoke(command[0], broken, *command[1:]), MODEL_FILE, "sha256")


def test_a_missing_data_file_is_one_line(run_dir, tmp_path):
    result = invoke("eval", run_dir, "--data", tmp_path / "absent.txt")
    assert_one_line_error(result, "--data", "absent.txt")


@pytest.mark.parametrize("args, flag", [
    (["--prompt", ""], "--prompt"),
    (["--prompt", "hi", "--top-p", "1.5"], "--top-p"),
    (["--prompt", "hi", "--top-p", "0"], "--top-p"),
    (["--prompt", "hi", "--top-k", "0"], "--top-k"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt", "hi", "--seed", "x"], "--seed"),
    ([], "--prompt"),
])
def test_bad_generate_flags_are_one_line_naming_the_flag(args, flag, run_dir):
    assert_one_line_error(invoke("generate", run_dir, *args), flag)


@pytest.mark.parametrize("args, flag", [
    (["--max-tokens", "1"], "--max-tokens"),
    (["--batch-size", "0"], "--batch-size"),
    (["--text", "hi"], "--text"),
])
def test_bad_eval_flags_are_one_line_naming_the_flag(args, flag, run_dir):
    assert_one_line_error(invoke("eval", run_dir, *args), flag)


def test_an_unknown_command_is_one_line():
    assert_one_line_error(invoke("no-such-command"), "no-such-command")
