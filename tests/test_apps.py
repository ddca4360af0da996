"""Apps end to end: LLM.CREATE-APP / CREATE-SEARCH / CREATE-CHAT, LLM.RUN,
LLM.CHAT-LOG and LLM.HISTORY against a real redis-server and a real
(scripted) OpenAI-compatible HTTP server.

Every request the module makes is read back from the HTTP server's log, so
the tests check exactly what the model was asked; every error case also
checks that nothing changed and that no request was made.
"""

import json
import threading
import time

import numpy as np
import pytest
import redis
from helpers import ERROR_CODE, error_text, expect_error  # noqa: F401
from openai_server import OpenAIServer
from redis.backoff import NoBackoff
from redis.retry import Retry

CREATE_APP, CREATE_SEARCH, CREATE_CHAT = "LLM.CREATE-APP", "LLM.CREATE-SEARCH", "LLM.CREATE-CHAT"
RUN, CHAT_LOG, HISTORY = "LLM.RUN", "LLM.CHAT-LOG", "LLM.HISTORY"
DIM = 8  # the HTTP server's embedding length

DEFAULT_SEARCH_PROMPT = (
    'Please answer the following question based on the given context.\n'
    'Context: """\n{{context}}\n"""\nQuestion: """\n{{question}}\n"""\nAnswer:')
DEFAULT_CHAT_PROMPT = (
    'You are a friendly chatbot. The following is a summary of parts of your chat history '
    'with user: """\n{{history}}\n"""')
DEFAULT_SUMMARY_PROMPT = (
    "Give a concise and comprehensive summary of the given conversation (in JSON format). "
    "The summary should capture the main points and supporting details.\n"
    'Conversation: """\n{{conversation}}\n"""\nSummary:')


# ---- helpers ----------------------------------------------------------------





def digest(r, *keys) -> list:
    """What can be observed of keys: their type and content digest."""
    return [(r.type(key), r.execute_command("DEBUG", "DIGEST-VALUE", key)) for key in keys]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def sent_messages(api: OpenAIServer, index: int = -1) -> list:
    """The messages of a logged chat request."""
    return api.chat_requests()[index].body["messages"]


def verbose(reply: list) -> dict:
    """An LLM.RUN --VERBOSE reply as a dict (and its keys in order)."""
    assert len(reply) == 18, reply
    names = reply[0::2]
    assert names == [b"answer", b"prompt", b"items", b"model", b"prompt_tokens",
                     b"completion_tokens", b"served_from", b"record", b"served_review"], names
    return dict(zip((n.decode() for n in names), reply[1::2]))


def l2(a, b) -> float:
    d = np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)
    return float(np.dot(d, d))


def nearest(texts: list[str], query: str) -> list[str]:
    """texts ordered by squared L2 distance of the HTTP server's embeddings to query's."""
    q = OpenAIServer.embedding_for(query, DIM)
    return sorted(texts, key=lambda t: l2(OpenAIServer.embedding_for(t, DIM), q))


class LogWatch:
    """Checks that the server's log got no traceback since the watch began."""

    def __init__(self, server):
        self.server = server
        self.start = len(server.log)

    def assert_clean(self):
        new = self.server.log[self.start:]
        assert "Traceback" not in new, new


@pytest.fixture
def llm(r, api):
    """An openai LLM at key 'llm' talking to the scripted server."""
    assert r.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS",
                             json.dumps({"base_url": api.url})) == 1
    return "llm"


@pytest.fixture
def store(r, llm):
    """A vector store at key 'docs' whose items the LLM embeds."""
    assert r.execute_command("LLM.CREATE-VECTOR-STORE", "docs", "--LLM", llm) == 1
    return "docs"


def add(r, store_key: str, data: str, meta: dict | None = None) -> int:
    args = ["LLM.ADD", store_key]
    if meta is not None:
        args += ["--META", json.dumps(meta)]
    return r.execute_command(*args, data)


# ---- 1. creating apps ---------------------------------------------------------

def test_create_app_search_and_chat_reply_1_and_make_llm_appli_keys(r, llm, store):
    assert r.execute_command(CREATE_APP, "a", "--LLM", llm) == 1
    assert r.execute_command(CREATE_APP, "a2", "--LLM", llm, "--PROMPT", "Say hello to {{name}}") == 1
    assert r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store) == 1
    assert r.execute_command(CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store) == 1
    for key in ("a", "a2", "s", "c"):
        assert r.type(key) == b"llm-appli"
    # Options are case-insensitive.
    assert r.execute_command("llm.create-search", "s2", "--llm", llm, "--vector-store", store,
                             "--k", "2") == 1
    assert r.type("s2") == b"llm-appli"


CREATES = {
    "app": (CREATE_APP, "--LLM", "llm"),
    "search": (CREATE_SEARCH, "--LLM", "llm", "--VECTOR-STORE", "docs"),
    "chat": (CREATE_CHAT, "--LLM", "llm", "--VECTOR-STORE", "docs"),
}


@pytest.mark.parametrize("kind", list(CREATES))
def test_create_nx_and_xx(r, llm, store, kind):
    name, *options = CREATES[kind]
    assert r.execute_command(name, "k", "--XX", *options) == 0
    assert r.exists("k") == 0
    assert r.execute_command(name, "k", "--NX", *options, "--PROMPT", "first {{context}} {{question}}") == 1
    before = digest(r, "k")
    assert r.execute_command(name, "k", "--NX", *options, "--PROMPT", "second {{context}} {{question}}") == 0
    assert digest(r, "k") == before
    assert r.execute_command(name, "k", "--XX", *options, "--PROMPT", "third {{context}} {{question}}") == 1
    assert digest(r, "k") != before
    # Without NX/XX an existing app is replaced.
    assert r.execute_command(name, "k", *options) == 1
    expect_error(r, name, "k", "--NX", "--XX", *options, match="cannot be combined")


@pytest.mark.parametrize("kind", list(CREATES))
def test_create_over_another_type_is_wrongtype_and_changes_nothing(r, llm, store, kind):
    name, *options = CREATES[kind]
    r.set("str", "v")
    for key in ("str", "docs", "llm"):
        before = digest(r, key)
        for flag in ((), ("--NX",), ("--XX",)):
            expect_error(r, name, key, *flag, *options, code="WRONGTYPE")
        assert digest(r, key) == before
    assert r.get("str") == b"v"


def test_llm_option_is_required(r, llm, store):
    expect_error(r, CREATE_APP, "a", "--PROMPT", "hi", match=r"^ERR option --LLM is required$")
    expect_error(r, CREATE_SEARCH, "s", "--VECTOR-STORE", store, "--K", "3",
                 match=r"^ERR option --LLM is required$")
    expect_error(r, CREATE_CHAT, "c", "--VECTOR-STORE", store, "--PROMPT", "x",
                 match=r"^ERR option --LLM is required$")
    assert r.exists("a", "s", "c") == 0


def test_vector_store_option_is_required_for_search_and_chat(r, llm):
    expect_error(r, CREATE_SEARCH, "s", "--LLM", llm, "--K", "3",
                 match=r"^ERR option --VECTOR-STORE is required$")
    expect_error(r, CREATE_CHAT, "c", "--LLM", llm, "--PROMPT", "x",
                 match=r"^ERR option --VECTOR-STORE is required$")
    assert r.exists("s", "c") == 0


@pytest.mark.parametrize("prompt, missing", [
    ("Answer {{question}}", "context"),
    ("Use {{context}}", "question"),
    ("Nothing at all", "context, question"),
    ("{{ contexts }} {{ questions }}", "context, question"),
])
def test_search_prompt_must_use_context_and_question(r, llm, store, prompt, missing):
    text = expect_error(r, CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store,
                        "--PROMPT", prompt)
    assert text.endswith(f"missing: {missing}"), text
    assert "{{context}}" in text and "{{question}}" in text
    assert r.exists("s") == 0


def test_search_prompt_with_context_and_question_in_expressions_is_accepted(r, llm, store):
    prompt = "{% if question %}Q: {{ question|trim }}{% endif %} C: {{ context }}"
    assert r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store,
                             "--PROMPT", prompt) == 1


@pytest.mark.parametrize("kind", list(CREATES))
@pytest.mark.parametrize("prompt, line", [
    ("Say hello to {{ name", 1),
    ("line one\n{% if x %}no end", 2),
    ("{{ }}", 1),
    ("{% for %}", 1),
    ("{{ name | }}", 1),
])
def test_template_syntax_error_is_refused(r, llm, store, kind, prompt, line):
    name, *options = CREATES[kind]
    expect_error(r, name, "k", *options, "--PROMPT", prompt,
                 match=rf"^ERR prompt template error on line {line}: \S")
    assert r.exists("k") == 0


def test_summary_prompt_syntax_error_is_refused(r, llm, store):
    expect_error(r, CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                 "--HISTORY", json.dumps({"summary_prompt": "{{ conversation"}),
                 match=r"^ERR summary_prompt template error on line 1: ")
    assert r.exists("c") == 0


@pytest.mark.parametrize("history, match", [
    ({"summary_count": 3}, r"unknown --HISTORY field 'summary_count'"),
    ({"summary_cnt": -1}, r"'summary_cnt' must be an integer from 0 to 10000"),
    ({"summary_cnt": 10001}, r"'summary_cnt' must be an integer from 0 to 10000"),
    ({"summary_ctx_cnt": 101}, r"'summary_ctx_cnt' must be an integer from 0 to 100"),
    ({"msg_ctx_cnt": 10001}, r"'msg_ctx_cnt' must be an integer from 0 to 10000"),
    ({"msg_ctx_cnt": "5"}, r"'msg_ctx_cnt' must be an integer"),
    ({"msg_ctx_cnt": 2.5}, r"'msg_ctx_cnt' must be an integer"),
    ({"summary_cnt": True}, r"'summary_cnt' must be an integer"),
    ({"summary_cnt": None}, r"'summary_cnt' must be an integer"),
    ({"summary_prompt": 7}, r"'summary_prompt' must be a string"),
    ({"summary_prompt": "Summarise it"}, r"'summary_prompt' must use \{\{conversation\}\}"),
])
def test_bad_history_is_refused(r, llm, store, history, match):
    expect_error(r, CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                 "--HISTORY", json.dumps(history), match=match)
    assert r.exists("c") == 0


def test_history_must_be_a_json_object(r, llm, store):
    for bad in ("[1]", "not json", "3"):
        expect_error(r, CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                     "--HISTORY", bad, match=r"^ERR --HISTORY must be")
    assert r.exists("c") == 0


def test_summary_prompt_need_not_use_conversation_when_summaries_are_off(r, llm, store):
    assert r.execute_command(CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                             "--HISTORY", json.dumps({"summary_cnt": 0,
                                                      "summary_prompt": "Summarise"})) == 1


@pytest.mark.parametrize("k", ["0", "101", "-1", "3.5", "abc", ""])
def test_search_k_out_of_range_is_refused(r, llm, store, k):
    expect_error(r, CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store, "--K", k,
                 match=r"^ERR --K must be an integer from 1 to 100")
    assert r.exists("s") == 0


def test_search_k_bounds_are_accepted(r, llm, store):
    assert r.execute_command(CREATE_SEARCH, "s1", "--LLM", llm, "--VECTOR-STORE", store, "--K", "1") == 1
    assert r.execute_command(CREATE_SEARCH, "s100", "--LLM", llm, "--VECTOR-STORE", store,
                             "--K", "100") == 1


def test_failed_create_changes_nothing(r, api, llm, store):
    api.script("old prompt used")
    assert r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "old {{x}}") == 1
    assert r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store) == 1
    assert r.execute_command(CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store) == 1
    r.execute_command(CHAT_LOG, "c", json.dumps([user("kept")]))
    before = digest(r, "a", "s", "c")
    expect_error(r, CREATE_APP, "a", "--LLM", llm, "--PROMPT", "new {{ x")
    expect_error(r, CREATE_APP, "a", "--XX", "--LLM", llm, "--PROMPT", "new {{ x")
    expect_error(r, CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store, "--K", "0")
    expect_error(r, CREATE_SEARCH, "s", "--XX", "--LLM", llm, "--VECTOR-STORE", store,
                 "--PROMPT", "no vars")
    expect_error(r, CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                 "--HISTORY", '{"bad": 1}')
    expect_error(r, CREATE_CHAT, "c", "--XX", "--LLM", llm, "--VECTOR-STORE", store,
                 "--PROMPT", "{% if %}")
    assert digest(r, "a", "s", "c") == before
    assert r.execute_command(HISTORY, "c") == [[b"user", b"kept"]]
    assert r.execute_command(RUN, "a", "--VARS", '{"x": 1}') == b"old prompt used"
    assert sent_messages(api) == [user("old 1")]


def test_create_commands_need_their_arguments(r, llm):
    for args in ((CREATE_APP,), (CREATE_APP, "a"), (CREATE_APP, "a", "--LLM"),
                 (CREATE_SEARCH, "s", "--LLM", llm), (CREATE_CHAT, "c", "--LLM", llm)):
        with pytest.raises(redis.ResponseError) as info:
            r.execute_command(*args)
        assert "wrong number of arguments" in str(info.value)
    expect_error(r, CREATE_APP, "a", "--LLM", llm, "--PROMPT", match=r"--PROMPT needs a value")
    expect_error(r, CREATE_APP, "a", "--LLM", llm, "--K", "3", match=r"unknown option '--K'")
    expect_error(r, CREATE_APP, "a", "--LLM", llm, "--LLM", llm, match=r"--LLM given more than once")
    assert r.exists("a", "s", "c") == 0


# ---- 2. simple apps -------------------------------------------------------------

def test_hello_world_sends_the_rendered_prompt_as_one_user_message(r, api, llm):
    api.script("Hello LLM! Nice to meet you.")
    assert r.execute_command(CREATE_APP, "hello-world", "--LLM", llm,
                             "--PROMPT", "Say hello to {{name}}") == 1
    assert r.execute_command(RUN, "hello-world", "--VARS", '{"name":"LLM"}') == \
        b"Hello LLM! Nice to meet you."
    requests = api.chat_requests()
    assert len(requests) == 1 and not api.embedding_requests()
    assert requests[0].path == "/v1/chat/completions"
    assert requests[0].body == {"model": "gpt-3.5-turbo", "messages": [user("Say hello to LLM")]}


def test_input_is_appended_after_a_blank_line(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "Translate to {{lang}}:")
    assert r.execute_command(RUN, "a", "--VARS", '{"lang": "French"}', "good morning") == \
        b"echo: Translate to French:\n\ngood morning"
    assert sent_messages(api) == [user("Translate to French:\n\ngood morning")]


def test_input_variable_is_placed_by_the_template_and_not_appended(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "<<{{input}}>> in {{lang}}")
    r.execute_command(RUN, "a", "--VARS", '{"lang": "French"}', "good morning")
    assert sent_messages(api) == [user("<<good morning>> in French")]
    # Without an input, {{input}} is empty.
    r.execute_command(RUN, "a", "--VARS", '{"lang": "French"}')
    assert sent_messages(api) == [user("<<>> in French")]


def test_app_without_prompt_sends_the_input_alone(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    assert r.execute_command(RUN, "a", "What is Redis?") == b"echo: What is Redis?"
    assert sent_messages(api) == [user("What is Redis?")]


def test_prompt_without_input_is_sent_alone(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "Tell a joke")
    r.execute_command(RUN, "a")
    assert sent_messages(api) == [user("Tell a joke")]


def test_undefined_variable_is_an_error_naming_it_and_makes_no_request(r, api, llm, server):
    watch = LogWatch(server)
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "Say hello to {{name}} from {{city}}")
    expect_error(r, RUN, "a", match=r"^ERR template variable error: '(name|city)' is undefined$")
    expect_error(r, RUN, "a", "--VARS", '{"name": "LLM"}',
                 match=r"^ERR template variable error: 'city' is undefined$")
    expect_error(r, RUN, "a", "--VARS", '{"city": "Paris"}', "some input",
                 match=r"^ERR template variable error: 'name' is undefined$")
    assert api.requests == []
    assert r.execute_command(RUN, "a", "--VARS", '{"name": "LLM", "city": "Paris"}') == \
        b"echo: Say hello to LLM from Paris"
    watch.assert_clean()


def test_app_with_no_prompt_and_no_input_is_an_error(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    expect_error(r, RUN, "a", match=r"^ERR nothing to ask")
    expect_error(r, RUN, "a", "--VARS", '{"x": 1}', match=r"^ERR nothing to ask")
    r.execute_command(CREATE_APP, "b", "--LLM", llm, "--PROMPT", "{{ x }}")
    expect_error(r, RUN, "b", "--VARS", '{"x": ""}', match=r"^ERR nothing to ask")
    assert api.requests == []


def test_verbose_reply_has_prompt_model_and_the_servers_token_counts(r, api, llm):
    api.script("Hello LLM, nice to meet you")
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "Say hello to {{name}}")
    reply = verbose(r.execute_command(RUN, "a", "--VARS", '{"name":"LLM"}', "--VERBOSE", "please"))
    assert reply == {"answer": b"Hello LLM, nice to meet you",
                     "prompt": b"Say hello to LLM\n\nplease",
                     "items": [], "model": b"gpt-3.5-turbo",
                     "prompt_tokens": 5, "completion_tokens": 6, "served_from": b"llm",
                     "record": 1, "served_review": None}


def test_verbose_reply_names_the_record_of_the_run_or_nil_without_records(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    r.execute_command(CREATE_APP, "quiet", "--LLM", llm, "--RECORD", "0")
    api.script("first", "second", "third")
    assert verbose(r.execute_command(RUN, "a", "--VERBOSE", "x"))["record"] == 1
    assert verbose(r.execute_command(RUN, "a", "--VERBOSE", "y"))["record"] == 2
    assert r.execute_command("LLM.RESULT", "a", 2)[11] == b"second"
    assert verbose(r.execute_command(RUN, "quiet", "--VERBOSE", "z"))["record"] is None


def test_verbose_model_and_token_counts_come_from_the_llm(r, api):
    r.execute_command("LLM.CREATE-LLM", "gpt4", "--PARAMS",
                      json.dumps({"base_url": api.url, "chat": {"model": "gpt-4o", "temperature": 0}}))
    r.execute_command(CREATE_APP, "a", "--LLM", "gpt4")
    api.script("one two three four five six seven")
    reply = verbose(r.execute_command(RUN, "a", "--VERBOSE", "a b c"))
    assert reply["model"] == b"gpt-4o"
    assert (reply["prompt_tokens"], reply["completion_tokens"]) == (3, 7)
    assert api.chat_requests()[0].body == {"model": "gpt-4o", "temperature": 0,
                                           "messages": [user("a b c")]}


def test_run_params_are_merged_into_the_request(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    r.execute_command(RUN, "a", "--PARAMS", '{"temperature": 0.5, "model": "gpt-4"}', "hi")
    assert api.chat_requests()[0].body == {"model": "gpt-4", "temperature": 0.5,
                                           "messages": [user("hi")]}
    # The override lasts one call.
    r.execute_command(RUN, "a", "hi")
    assert api.chat_requests()[1].body == {"model": "gpt-3.5-turbo", "messages": [user("hi")]}


def test_provider_errors_become_err_replies(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    api.fail(400, message="bad request from the model")
    expect_error(r, RUN, "a", "hi", match=r"^ERR openai: 400 bad request from the model$")
    assert r.execute_command(RUN, "a", "hi") == b"echo: hi"


def test_non_utf8_input_and_vars_are_sent_as_text(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "{{ who }} says")
    r.execute_command(RUN, "a", "--VARS", json.dumps({"who": "Zoë 日本"}), "héllo")
    assert sent_messages(api) == [user("Zoë 日本 says\n\nhéllo")]


# ---- 3. the template sandbox ------------------------------------------------------

UNSAFE_TEMPLATES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ x.__class__ }}",
    "{{ x.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ namespace(a=1).__class__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ x.__len__() }}",
    "{{ x.upper.__call__() }}",
    "{{ x|attr('__class__') }}",
    "{{ '{0.__class__.__mro__}'.format(x) }}",
    "{{ '%s'|format(x.__class__) }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ self.__init__ }}",
    "{{ dict.__class__ }}",
]


REFUSED_AT_CREATE = (r"^ERR prompt template refused by the sandbox: '__\w+__' on line 1; "
                     r"templates cannot reach Python internals$")


@pytest.mark.parametrize("template", UNSAFE_TEMPLATES)
def test_sandbox_refuses_unsafe_attributes_when_the_app_is_created(r, api, llm, server, template):
    watch = LogWatch(server)
    expect_error(r, CREATE_APP, "a", "--LLM", llm, "--PROMPT", template, match=REFUSED_AT_CREATE)
    assert r.exists("a") == 0
    assert api.requests == []
    assert r.ping()
    watch.assert_clean()


@pytest.mark.parametrize("template, variables", [
    ("{{ x|attr(name) }}", {"x": "abc", "name": "__class__"}),
    ("{{ x[name] }}", {"x": "abc", "name": "__class__"}),
    ("{{ ('{0.' ~ name ~ '}').format(x) }}", {"x": "abc", "name": "__class__"}),
    ("{{ x|attr(name)|attr(name) }}", {"x": [], "name": "__class__"}),
])
def test_sandbox_refuses_unsafe_attributes_named_by_variables_when_run(r, api, llm, server, template,
                                                                       variables):
    watch = LogWatch(server)
    assert r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", template) == 1
    expect_error(r, RUN, "a", "--VARS", json.dumps(variables), "input",
                 match=r"^ERR template refused by the sandbox: access to attribute '__\w+__' "
                       r"of '\w+' object is unsafe\.$")
    assert api.requests == []
    watch.assert_clean()


@pytest.mark.parametrize("template", [
    "{{ x.__class__ }} {{ context }} {{ question }}",
    "{{ cycler.__init__.__globals__ }}{{ context }}{{ question }}",
])
def test_sandbox_applies_to_search_prompts(r, api, llm, store, template):
    expect_error(r, CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store, "--PROMPT", template,
                 match=REFUSED_AT_CREATE)
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store,
                      "--PROMPT", "{{ x|attr(name) }} {{ context }} {{ question }}")
    expect_error(r, RUN, "s", "--VARS", '{"x": "abc", "name": "__class__"}', "question",
                 match=r"^ERR template refused by the sandbox")
    assert api.chat_requests() == []


def test_sandbox_applies_to_chat_prompts(r, api, llm, store):
    expect_error(r, CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                 "--PROMPT", "{{ cycler.__init__.__globals__ }} {{ history }}", match=REFUSED_AT_CREATE)
    expect_error(r, CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                 "--HISTORY", json.dumps({"summary_prompt": "{{ conversation.__class__ }}"}),
                 match=r"^ERR summary_prompt template refused by the sandbox: '__class__'")
    r.execute_command(CREATE_CHAT, "c", "--LLM", llm, "--VECTOR-STORE", store,
                      "--PROMPT", "{{ x|attr(name) }} {{ history }}")
    expect_error(r, RUN, "c", "--VARS", '{"x": "abc", "name": "__class__"}', "hi",
                 match=r"^ERR template refused by the sandbox")
    assert api.chat_requests() == []
    assert r.execute_command(HISTORY, "c") == []


def test_sandbox_keeps_normal_filters_and_statements(r, api, llm):
    template = ("Hello {{ name|upper }}{% for t in tags %}, {{ loop.index }}:{{ t|title }}{% endfor %}"
                "{% if n > 1 %} ({{ n * 2 }}){% endif %} {{ items|join('/') }} {{ range(3)|list }}")
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", template)
    variables = {"name": "llm", "tags": ["red", "blue"], "n": 2, "items": ["a", "b"]}
    r.execute_command(RUN, "a", "--VARS", json.dumps(variables))
    assert sent_messages(api) == [user("Hello LLM, 1:Red, 2:Blue (4) a/b [0, 1, 2]")]


def test_sandbox_refuses_huge_ranges(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "{{ range(n)|list|length }}")
    expect_error(r, RUN, "a", "--VARS", '{"n": 100000000}',
                 match=r"^ERR template refused by the sandbox: range\(\) beyond 1000000 elements")
    assert api.requests == []


def test_huge_number_in_a_template_is_an_err_reply_not_an_internal_error(r, api, llm, server):
    """Constant expressions are not folded when the app is created; at run time
    the sandbox refuses a huge power: an ERR about the prompt, never an internal
    error with a traceback in the log."""
    watch = LogWatch(server)
    r.execute_command(CREATE_APP, "a", "--LLM", llm, "--PROMPT", "{{ 10 ** 5000 }}")
    expect_error(r, RUN, "a", match=r"^ERR template refused by the sandbox: power too large")
    assert api.requests == []
    watch.assert_clean()


def _peak_rss_kb(srv) -> int:
    with open(f"/proc/{srv.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_template_arithmetic_cannot_make_the_server_allocate_huge_strings(make_server, api):
    """A prompt may only be 64 KiB, but its template can build any string:
    '{{ 'a' * 2**40 }}' in LLM.CREATE-APP made redis-server grow to all the
    machine's memory and get OOM-killed (jinja2 folds constants while
    compiling, on Redis' main thread). Checked here with 32 MiB, a size that
    is safe to try: the server's peak memory must not grow by it, and no such
    prompt may be sent."""
    srv = make_server("mem")
    client = srv.client()
    client.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS", json.dumps({"base_url": api.url}))
    client.execute_command(CREATE_APP, "warm", "--LLM", "llm", "--PROMPT", "{{ 'a' * 3 }}")
    assert client.execute_command(RUN, "warm") == b"echo: aaa"
    before = _peak_rss_kb(srv)
    replies = []
    for template, variables in (("{{ 'a' * 33554432 }}", "{}"),
                                ("{{ x * n }}", '{"x": "a", "n": 33554432}')):
        try:
            client.execute_command(CREATE_APP, "a", "--LLM", "llm", "--PROMPT", template)
            replies.append(client.execute_command(RUN, "a", "--VARS", variables, "--TIMEOUT", 5000))
        except redis.ResponseError as exc:
            replies.append(error_text(exc))
    grown_mb = (_peak_rss_kb(srv) - before) / 1024
    assert srv.alive()
    assert grown_mb < 16, f"redis-server's peak memory grew by {grown_mb:.0f} MB; replies {replies!r:.200}"
    assert all(isinstance(reply, str) and reply.startswith("ERR ") for reply in replies), \
        f"{replies!r:.200}"
    assert all(len(req.raw) < 2 << 20 for req in api.requests)


def _responsive_while(srv, *command) -> tuple[bool, dict]:
    """Send command from a thread; is the server still answering PING meanwhile?"""
    out = {}

    def send():
        try:
            out["reply"] = srv.client().execute_command(*command)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(0.5)
    try:
        ok = redis.Redis(host="127.0.0.1", port=srv.port, socket_timeout=2,
                         retry=Retry(NoBackoff(), 0)).ping()
    except redis.TimeoutError:
        ok = False
    return ok, out


def test_constant_folding_of_a_huge_power_does_not_block_the_server(make_server, api):
    """'{{ 9 ** (9 ** 9) }}' is folded by jinja2 while compiling the prompt in
    LLM.CREATE-APP, on Redis' main thread: minutes of CPU with Redis frozen."""
    srv = make_server("pow")
    client = srv.client()
    client.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS", json.dumps({"base_url": api.url}))
    ok, _ = _responsive_while(srv, CREATE_APP, "a", "--LLM", "llm", "--PROMPT", "{{ 9 ** (9 ** 9) }}")
    assert ok, "redis-server stopped answering PING while LLM.CREATE-APP compiled the prompt"


def test_rendering_a_long_running_template_does_not_block_the_server(make_server, api):
    """A simple app's prompt is rendered on Redis' main thread: a template
    looping 10**10 times freezes Redis for hours."""
    srv = make_server("loop")
    client = srv.client()
    client.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS", json.dumps({"base_url": api.url}))
    loop = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}done"
    assert client.execute_command(CREATE_APP, "a", "--LLM", "llm", "--PROMPT", loop) == 1
    ok, _ = _responsive_while(srv, RUN, "a", "--VARS", '{"n": 100000}', "--TIMEOUT", 1000)
    assert ok, "redis-server stopped answering PING while LLM.RUN rendered the prompt"


# ---- 4. search apps ---------------------------------------------------------------

DOCS = [
    ("redis-llm is an open source project written by sewenew", {"source": "README.md", "page": 1}),
    ("Redis is an in-memory data store", {"source": "redis.io", "page": 7}),
    ("Paris is the capital of France", None),
    ("The quick brown fox jumps over the lazy dog", {"source": "fox.txt"}),
    ("hnswlib implements approximate nearest neighbours", {"page": 2, "tags": ["x"], "ok": True}),
]
QUESTION = "who is the author of redis-llm"


def context_of(data: str, meta: dict | None) -> str:
    """How an item shows in {{context}}: its data, then its scalar meta fields."""
    fields = [f"{k}: {v}" for k, v in (meta or {}).items()
              if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    return data + (f"\n({', '.join(fields)})" if fields else "")


@pytest.fixture
def docs(r, api, store):
    """DOCS added to the store, embedded by the HTTP server; {data: (id, meta)}."""
    ids = {data: (add(r, store, data, meta), meta) for data, meta in DOCS}
    assert len(api.embedding_requests()) == len(DOCS)
    api.clear()
    return ids


@pytest.mark.parametrize("k", [1, 3])
def test_search_sends_the_k_nearest_items_as_context(r, api, llm, store, docs, k):
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store, "--K", k,
                      "--PROMPT", "C:\n{{context}}\nQ: {{question}}")
    api.script("The author is sewenew.")
    assert r.execute_command(RUN, "s", QUESTION) == b"The author is sewenew."
    # The question is embedded by the store's LLM, then one chat request.
    assert [req.body["input"] for req in api.embedding_requests()] == [[QUESTION]]
    expected = nearest([d for d, _ in DOCS], QUESTION)[:k]
    context = "\n\n".join(context_of(d, docs[d][1]) for d in expected)
    assert sent_messages(api) == [user(f"C:\n{context}\nQ: {QUESTION}")]


def test_search_context_shows_meta_source_and_page(r, api, llm, store):
    add(r, store, QUESTION, {"source": "README.md", "page": 3})  # distance 0: always nearest
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store, "--K", 1,
                      "--PROMPT", "[{{context}}] {{question}}")
    r.execute_command(RUN, "s", QUESTION)
    assert sent_messages(api) == [user(f"[{QUESTION}\n(source: README.md, page: 3)] {QUESTION}")]


def test_search_default_prompt_is_the_documented_one(r, api, llm, store):
    add(r, store, "redis-llm is an open source project written by sewenew")
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store)
    reply = verbose(r.execute_command(RUN, "s", "--VERBOSE", QUESTION))
    expected = DEFAULT_SEARCH_PROMPT.replace(
        "{{context}}", "redis-llm is an open source project written by sewenew").replace(
        "{{question}}", QUESTION)
    assert reply["prompt"] == expected.encode()
    assert sent_messages(api) == [user(expected)]


def test_search_verbose_items_carry_id_distance_data_and_meta(r, api, llm, store, docs):
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store, "--K", 3)
    api.script("sewenew")
    reply = verbose(r.execute_command(RUN, "s", "--VERBOSE", QUESTION))
    assert reply["answer"] == b"sewenew"
    q = OpenAIServer.embedding_for(QUESTION, DIM)
    expected = nearest([d for d, _ in DOCS], QUESTION)[:3]
    assert [item[2].decode() for item in reply["items"]] == expected
    for (item_id, distance, data, meta), text in zip(reply["items"], expected):
        assert item_id == docs[text][0]
        assert float(distance) == pytest.approx(l2(OpenAIServer.embedding_for(text, DIM), q),
                                                rel=1e-5, abs=1e-6)
        assert meta == (None if docs[text][1] is None else
                        json.dumps(docs[text][1], separators=(",", ":")).encode())
    assert reply["model"] == b"gpt-3.5-turbo"
    assert reply["prompt"].decode() == sent_messages(api)[0]["content"]
    assert reply["prompt_tokens"] == len(reply["prompt"].split())
    assert reply["completion_tokens"] == 1


def test_search_needs_a_question(r, api, llm, store, docs):
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store)
    expect_error(r, RUN, "s", match=r"^ERR a search app needs an input")
    expect_error(r, RUN, "s", "--VERBOSE", "--VARS", "{}", match=r"^ERR a search app needs an input")
    assert api.requests == []


def test_search_over_an_empty_store_still_answers(r, api, llm, store):
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store)
    api.script("I do not know.")
    reply = verbose(r.execute_command(RUN, "s", "--VERBOSE", QUESTION))
    expected = DEFAULT_SEARCH_PROMPT.replace("{{context}}", "").replace("{{question}}", QUESTION)
    assert reply["answer"] == b"I do not know."
    assert reply["items"] == []
    assert reply["prompt"] == expected.encode()
    assert sent_messages(api) == [user(expected)]


def test_search_uses_the_vars_too(r, api, llm, store, docs):
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store, "--K", 1,
                      "--PROMPT", "As a {{role}}: {{question}} / {{context}}")
    expect_error(r, RUN, "s", QUESTION, match=r"^ERR template variable error: 'role' is undefined$")
    assert api.requests == []
    r.execute_command(RUN, "s", "--VARS", '{"role": "librarian"}', QUESTION)
    top = nearest([d for d, _ in DOCS], QUESTION)[0]
    assert sent_messages(api) == [user(f"As a librarian: {QUESTION} / {context_of(top, docs[top][1])}")]


def test_search_with_a_deleted_store_names_the_key(r, api, llm, store, docs):
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store)
    r.delete(store)
    expect_error(r, RUN, "s", QUESTION, match=r"^ERR a vector store key 'docs' does not exist$")
    r.set(store, "now a string")
    expect_error(r, RUN, "s", QUESTION, match=r"^ERR key 'docs' does not hold a vector store$")
    assert api.requests == []


def test_search_with_a_deleted_llm_names_the_key(r, api, store, docs):
    r.execute_command("LLM.CREATE-LLM", "chat-llm", "--PARAMS", json.dumps({"base_url": api.url}))
    r.execute_command(CREATE_SEARCH, "s", "--LLM", "chat-llm", "--VECTOR-STORE", store)
    r.delete("chat-llm")
    expect_error(r, RUN, "s", QUESTION, match=r"^ERR an LLM key 'chat-llm' does not exist$")
    r.execute_command("LLM.CREATE-VECTOR-STORE", "chat-llm")
    expect_error(r, RUN, "s", QUESTION, match=r"^ERR key 'chat-llm' does not hold an LLM$")
    assert api.requests == []


def test_search_with_the_stores_llm_deleted_names_that_key(r, api, llm, store, docs):
    r.execute_command("LLM.CREATE-LLM", "other", "--PARAMS", json.dumps({"base_url": api.url}))
    r.execute_command(CREATE_SEARCH, "s", "--LLM", "other", "--VECTOR-STORE", store)
    r.delete(llm)
    expect_error(r, RUN, "s", QUESTION, match=r"^ERR an LLM key 'llm' does not exist$")
    assert api.requests == []


def test_search_over_a_store_without_llm_embeds_with_the_apps_llm(r, api, llm):
    r.execute_command("LLM.CREATE-VECTOR-STORE", "plain")
    vector = OpenAIServer.embedding_for(QUESTION, DIM)
    r.execute_command("LLM.ADD", "plain", "--EMBEDDING", ",".join(map(str, vector)), "the answer")
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", "plain", "--K", 1,
                      "--PROMPT", "{{context}}|{{question}}")
    r.execute_command(RUN, "s", QUESTION)
    assert [req.body["input"] for req in api.embedding_requests()] == [[QUESTION]]
    assert sent_messages(api) == [user(f"the answer|{QUESTION}")]


# ---- 5. chat apps -----------------------------------------------------------------

def make_chat(r, key="chat", store_key="docs", prompt="You are a bot.", **history) -> None:
    args = [CREATE_CHAT, key, "--LLM", "llm", "--VECTOR-STORE", store_key]
    if prompt is not None:
        args += ["--PROMPT", prompt]
    if history:
        args += ["--HISTORY", json.dumps(history)]
    assert r.execute_command(*args) == 1


def history_of(r, key="chat", session=None) -> list:
    args = [HISTORY, key] + (["--SESSION", session] if session is not None else [])
    return [(role.decode(), content.decode()) for role, content in r.execute_command(*args)]


def test_chat_sends_system_prompt_then_the_last_messages_then_the_input(r, api, store):
    make_chat(r, summary_cnt=0, msg_ctx_cnt=2)
    assert r.execute_command(RUN, "chat", "one") == b"echo: one"
    assert sent_messages(api) == [system("You are a bot."), user("one")]
    assert r.execute_command(RUN, "chat", "two") == b"echo: two"
    assert sent_messages(api) == [system("You are a bot."), user("one"), assistant("echo: one"),
                                  user("two")]
    r.execute_command(RUN, "chat", "three")
    assert sent_messages(api) == [system("You are a bot."), user("two"), assistant("echo: two"),
                                  user("three")]
    assert len(api.chat_requests()) == 3 and api.embedding_requests() == []


def test_chat_default_prompt_with_no_history_yet(r, api, store):
    make_chat(r, prompt=None)
    reply = verbose(r.execute_command(RUN, "chat", "--VERBOSE", "hi"))
    expected = DEFAULT_CHAT_PROMPT.replace("{{history}}", "")
    assert reply["prompt"] == expected.encode()
    assert reply["items"] == []
    assert sent_messages(api) == [system(expected), user("hi")]


def test_chat_with_msg_ctx_cnt_0_sends_no_earlier_messages(r, api, store):
    make_chat(r, summary_cnt=0, msg_ctx_cnt=0)
    r.execute_command(RUN, "chat", "one")
    r.execute_command(RUN, "chat", "two")
    assert sent_messages(api) == [system("You are a bot."), user("two")]


def test_chat_with_an_empty_system_prompt_sends_no_system_message(r, api, store):
    make_chat(r, prompt="", summary_cnt=0)
    r.execute_command(RUN, "chat", "one")
    assert sent_messages(api) == [user("one")]


def test_chat_history_records_each_turn(r, api, store):
    make_chat(r)
    api.script("first answer", "second answer")
    assert history_of(r) == []
    r.execute_command(RUN, "chat", "first question")
    r.execute_command(RUN, "chat", "second question")
    assert history_of(r) == [("user", "first question"), ("assistant", "first answer"),
                             ("user", "second question"), ("assistant", "second answer")]


def test_chat_sessions_keep_separate_conversations(r, api, store):
    make_chat(r, summary_cnt=0)
    r.execute_command(RUN, "chat", "--SESSION", "alice", "I am Alice")
    r.execute_command(RUN, "chat", "--SESSION", "bob", "I am Bob")
    r.execute_command(RUN, "chat", "--SESSION", "alice", "Who am I?")
    assert sent_messages(api) == [system("You are a bot."), user("I am Alice"),
                                  assistant("echo: I am Alice"), user("Who am I?")]
    r.execute_command(RUN, "chat", "Who am I?")  # the default session
    assert sent_messages(api) == [system("You are a bot."), user("Who am I?")]
    assert history_of(r, session="alice") == [("user", "I am Alice"), ("assistant", "echo: I am Alice"),
                                              ("user", "Who am I?"), ("assistant", "echo: Who am I?")]
    assert history_of(r, session="bob") == [("user", "I am Bob"), ("assistant", "echo: I am Bob")]
    assert history_of(r) == [("user", "Who am I?"), ("assistant", "echo: Who am I?")]
    assert history_of(r, session="") == history_of(r)
    assert history_of(r, session="carol") == []


def test_chat_summarises_every_summary_cnt_messages_into_the_store(r, api, store):
    make_chat(r, prompt=None, summary_cnt=4)
    summary = "SUMMARY: the user counted one and two"
    api.script("answer 1", "answer 2", summary)
    assert r.execute_command(RUN, "chat", "one") == b"answer 1"
    assert len(api.chat_requests()) == 1 and r.execute_command("LLM.SIZE", store) == 0
    assert r.execute_command(RUN, "chat", "two") == b"answer 2"
    # Two turns = 4 messages: one summary request, then its embedding.
    chats = api.chat_requests()
    assert len(chats) == 3
    conversation = "user: one\nassistant: answer 1\nuser: two\nassistant: answer 2"
    assert chats[2].body["messages"] == [
        user(DEFAULT_SUMMARY_PROMPT.replace("{{conversation}}", conversation))]
    assert [req.body["input"] for req in api.embedding_requests()] == [[summary]]
    assert r.execute_command("LLM.SIZE", store) == 1
    vector = OpenAIServer.embedding_for(summary, DIM)
    (item,) = r.execute_command("LLM.KNN", store, "--WITHDATA", "--EMBEDDING", ",".join(map(str, vector)))
    assert item[2] == summary.encode()
    assert json.loads(item[3]) == {"session": "", "app": "chat"}
    # The next turn's system prompt holds the summary; the messages are still sent.
    api.clear()
    reply = verbose(r.execute_command(RUN, "chat", "--VERBOSE", "three"))
    system_prompt = DEFAULT_CHAT_PROMPT.replace("{{history}}", summary)
    assert reply["prompt"] == system_prompt.encode()
    assert [it[2] for it in reply["items"]] == [summary.encode()]
    assert json.loads(reply["items"][0][3]) == {"session": "", "app": "chat"}
    assert [req.body["input"] for req in api.embedding_requests()] == [["three"]]
    assert sent_messages(api) == [system(system_prompt), user("one"), assistant("answer 1"),
                                  user("two"), assistant("answer 2"), user("three")]


def test_chat_summaries_are_per_session(r, api, store):
    make_chat(r, prompt="H: {{history}}", summary_cnt=2, summary_ctx_cnt=5)
    api.script("a1", "summary of alice", "b1", "summary of bob")
    r.execute_command(RUN, "chat", "--SESSION", "alice", "hi from alice")
    r.execute_command(RUN, "chat", "--SESSION", "bob", "hi from bob")
    assert r.execute_command("LLM.SIZE", store) == 2
    reply = verbose(r.execute_command(RUN, "chat", "--SESSION", "alice", "--VERBOSE", "again"))
    assert reply["prompt"] == b"H: summary of alice"
    assert [json.loads(it[3]) for it in reply["items"]] == [{"session": "alice", "app": "chat"}]
    reply = verbose(r.execute_command(RUN, "chat", "--VERBOSE", "default session"))
    assert reply["prompt"] == b"H: " and reply["items"] == []


def test_chat_summaries_of_another_app_sharing_the_store_are_not_its_history(r, api, store):
    """Two chat apps may share a vector store: each summary is tagged with
    its app, and an app's {{history}} must only hold its own summaries."""
    make_chat(r, "c1", prompt="H: {{history}}", summary_cnt=2, summary_ctx_cnt=5)
    make_chat(r, "c2", prompt="H: {{history}}", summary_cnt=2, summary_ctx_cnt=5)
    api.script("x", "summary of c1", "y", "summary of c2")
    r.execute_command(RUN, "c1", "hello")
    r.execute_command(RUN, "c2", "hello")
    assert r.execute_command("LLM.SIZE", store) == 2
    reply = verbose(r.execute_command(RUN, "c2", "--VERBOSE", "what did we say?"))
    assert [json.loads(it[3])["app"] for it in reply["items"]] == ["c2"]
    assert reply["prompt"] == b"H: summary of c2"


def test_chat_summary_ctx_cnt_limits_the_summaries_used(r, api, store):
    make_chat(r, prompt="H: {{history}}", summary_cnt=2, summary_ctx_cnt=1)
    api.script("a", "S1", "b", "S2")
    r.execute_command(RUN, "chat", "first")
    r.execute_command(RUN, "chat", "second")
    assert r.execute_command("LLM.SIZE", store) == 2
    reply = verbose(r.execute_command(RUN, "chat", "--VERBOSE", "third"))
    assert len(reply["items"]) == 1
    expected = nearest(["S1", "S2"], "third")[0]
    assert reply["prompt"] == f"H: {expected}".encode()


def test_chat_with_summary_cnt_0_makes_no_summaries(r, api, store):
    make_chat(r, summary_cnt=0)
    for i in range(6):
        r.execute_command(RUN, "chat", f"turn {i}")
    assert len(api.chat_requests()) == 6
    assert api.embedding_requests() == []
    assert r.execute_command("LLM.SIZE", store) == 0


def test_chat_with_summary_cnt_0_keeps_only_msg_ctx_cnt_messages(r, api, store):
    """Without summaries nothing waits to be summarised: a session holds its
    last msg_ctx_cnt messages, not every message ever sent."""
    make_chat(r, summary_cnt=0, msg_ctx_cnt=2)
    for i in range(4):
        r.execute_command(RUN, "chat", f"turn {i}")
    assert history_of(r) == [("user", "turn 3"), ("assistant", "echo: turn 3")]


def test_chat_keeps_msg_ctx_cnt_messages_once_summarised(r, api, store):
    make_chat(r, summary_cnt=2, msg_ctx_cnt=2)
    for i in range(4):
        r.execute_command(RUN, "chat", f"turn {i}")
    # Each turn was summarised right away: only the window is held.
    assert r.execute_command("LLM.SIZE", store) == 4
    assert len(history_of(r)) == 2


def test_chat_log_messages_count_towards_the_next_summary(r, api, store):
    make_chat(r, prompt=None, summary_cnt=4)
    assert r.execute_command(CHAT_LOG, "chat", json.dumps([user("logged q"), assistant("logged a")])) == 2
    api.script("live answer", "SUMMARY")
    r.execute_command(RUN, "chat", "live q")
    chats = api.chat_requests()
    assert len(chats) == 2
    conversation = "user: logged q\nassistant: logged a\nuser: live q\nassistant: live answer"
    assert conversation in chats[1].body["messages"][0]["content"]
    assert r.execute_command("LLM.SIZE", store) == 1


def test_a_failed_summary_does_not_fail_the_turn_and_is_retried_next_turn(r, api, store):
    """The answer was computed and the turn recorded: a failing summary call
    must not turn the reply into an error (a client retrying would record the
    question twice); the messages stay unsummarised and the next turn retries."""
    make_chat(r, prompt=None, summary_cnt=2)
    api.delay(0)  # the chat call is answered normally ...
    api.fail(400, message="summary refused")  # ... and the summary call fails
    api.script("answer 1")
    assert r.execute_command(RUN, "chat", "one") == b"answer 1"
    assert history_of(r) == [("user", "one"), ("assistant", "answer 1")]
    assert r.execute_command("LLM.SIZE", store) == 0
    api.script("answer 2", "SUMMARY")
    assert r.execute_command(RUN, "chat", "two") == b"answer 2"
    assert r.execute_command("LLM.SIZE", store) == 1
    conversation = "user: one\nassistant: answer 1\nuser: two\nassistant: answer 2"
    assert conversation in sent_messages(api)[0]["content"]


def test_session_option_is_for_chat_apps_only(r, api, llm, store):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store)
    expect_error(r, RUN, "a", "--SESSION", "x", "hi", match=r"^ERR --SESSION is for chat apps")
    expect_error(r, RUN, "s", "--SESSION", "x", "hi", match=r"^ERR --SESSION is for chat apps")
    assert api.requests == []


def test_chat_needs_an_input(r, api, store):
    make_chat(r)
    expect_error(r, RUN, "chat", match=r"^ERR a chat app needs an input")
    assert api.requests == [] and history_of(r) == []


def test_chat_with_a_deleted_store_or_llm_names_the_key(r, api, store):
    make_chat(r)
    r.delete(store)
    expect_error(r, RUN, "chat", "hi", match=r"^ERR a vector store key 'docs' does not exist$")
    r.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", "llm")
    r.delete("llm")
    expect_error(r, RUN, "chat", "hi", match=r"^ERR an LLM key 'llm' does not exist$")
    assert api.requests == [] and history_of(r) == []


def test_a_failed_chat_call_records_nothing(r, api, store):
    make_chat(r)
    api.fail(401, message="no such key")
    expect_error(r, RUN, "chat", "hi", match=r"^ERR openai: 401 no such key$")
    assert history_of(r) == []


# ---- LLM.CHAT-LOG and LLM.HISTORY ------------------------------------------------------

def test_chat_log_appends_and_returns_the_messages_held(r, store):
    make_chat(r)
    assert r.execute_command(CHAT_LOG, "chat", json.dumps([user("q1"), assistant("a1")])) == 2
    assert r.execute_command(CHAT_LOG, "chat", json.dumps([system("s")])) == 3
    assert r.execute_command(CHAT_LOG, "chat", "[]") == 3
    assert history_of(r) == [("user", "q1"), ("assistant", "a1"), ("system", "s")]
    assert r.execute_command(CHAT_LOG, "chat", "--SESSION", "other", json.dumps([user("x")])) == 1
    assert history_of(r, session="other") == [("user", "x")]
    assert len(history_of(r)) == 3


def test_chat_log_messages_are_sent_in_the_next_turn(r, api, store):
    make_chat(r, summary_cnt=0)
    r.execute_command(CHAT_LOG, "chat", json.dumps([user("My name is Ann"), assistant("Hi Ann")]))
    r.execute_command(RUN, "chat", "Who am I?")
    assert sent_messages(api) == [system("You are a bot."), user("My name is Ann"),
                                  assistant("Hi Ann"), user("Who am I?")]


@pytest.mark.parametrize("messages", [
    '{"role": "user", "content": "x"}',
    '"just text"',
    "not json",
    '[{"role": "bot", "content": "x"}]',
    '[{"role": "user", "content": "x", "name": "n"}]',
    '[{"role": "user"}]',
    '[{"content": "x"}]',
    '[{"role": "user", "content": 1}]',
    '[{"role": "user", "content": null}]',
    '[{"role": "user", "content": "ok"}, ["user", "x"]]',
    '[{"role": "USER", "content": "x"}]',
])
def test_chat_log_refuses_bad_messages_and_changes_nothing(r, store, messages):
    make_chat(r)
    r.execute_command(CHAT_LOG, "chat", json.dumps([user("kept")]))
    before = digest(r, "chat")
    expect_error(r, CHAT_LOG, "chat", messages, match=r"^ERR messages must be a JSON array")
    assert digest(r, "chat") == before
    assert history_of(r) == [("user", "kept")]


def test_chat_log_unsummarised_cannot_exceed_the_messages(r, store):
    make_chat(r)
    r.execute_command(CHAT_LOG, "chat", json.dumps([user("a")]))
    before = digest(r, "chat")
    expect_error(r, CHAT_LOG, "chat", "--UNSUMMARISED", "3", json.dumps([user("b")]),
                 match=r"^ERR --UNSUMMARISED must be at most 2")
    expect_error(r, CHAT_LOG, "chat", "--UNSUMMARISED", "-1", json.dumps([user("b")]),
                 match=r"^ERR --UNSUMMARISED must be an integer")
    expect_error(r, CHAT_LOG, "chat", "--SUMMARIES", "x", json.dumps([user("b")]),
                 match=r"^ERR --SUMMARIES must be an integer")
    assert digest(r, "chat") == before
    assert r.execute_command(CHAT_LOG, "chat", "--UNSUMMARISED", "2", json.dumps([user("b")])) == 2


def test_chat_log_on_a_missing_or_non_chat_key_is_an_error(r, llm, store):
    expect_error(r, CHAT_LOG, "nope", "[]", match=r"^ERR no app at key 'nope'")
    assert r.exists("nope") == 0
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    expect_error(r, CHAT_LOG, "a", json.dumps([user("x")]), match=r"^ERR the app at key 'a' is not a chat app")
    r.set("str", "v")
    expect_error(r, CHAT_LOG, "str", json.dumps([user("x")]), code="WRONGTYPE")
    expect_error(r, CHAT_LOG, store, json.dumps([user("x")]), code="WRONGTYPE")


def test_history_of_a_missing_key_is_empty(r):
    assert r.execute_command(HISTORY, "nope") == []
    assert r.execute_command(HISTORY, "nope", "--SESSION", "s") == []


def test_history_of_a_non_chat_key_is_an_error(r, llm, store):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    r.execute_command(CREATE_SEARCH, "s", "--LLM", llm, "--VECTOR-STORE", store)
    expect_error(r, HISTORY, "a", match=r"^ERR the app at key 'a' is not a chat app$")
    expect_error(r, HISTORY, "s", match=r"^ERR the app at key 's' is not a chat app$")
    r.set("str", "v")
    expect_error(r, HISTORY, "str", code="WRONGTYPE")
    expect_error(r, HISTORY, store, code="WRONGTYPE")
    expect_error(r, HISTORY, "a", "--FOO", match=r"unknown option")


# ---- 6. bad LLM.RUN input ----------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    (("--FOO", "hi"), r"^ERR unknown option '--FOO'$"),
    (("--FOO",), r"^ERR unknown option '--FOO'$"),
    (("--VERBOSE", "--VERBOSE", "hi"), r"^ERR option --VERBOSE given more than once$"),
    (("--VARS", "{}", "--vars", "{}", "hi"), r"^ERR option --VARS given more than once$"),
    (("--VARS", "[1, 2]", "hi"), r"^ERR --VARS must be a JSON object$"),
    (("--VARS", '"text"', "hi"), r"^ERR --VARS must be a JSON object$"),
    (("--VARS", "{bad", "hi"), r"^ERR --VARS must be valid JSON"),
    (("--PARAMS", "not json", "hi"), r"^ERR --PARAMS must be valid JSON"),
    (("--PARAMS", "[]", "hi"), r"^ERR --PARAMS must be a JSON object$"),
    (("--TIMEOUT", "-1", "hi"), r"^ERR --TIMEOUT must be an integer from 0 to 2147483647"),
    (("--TIMEOUT", "soon", "hi"), r"^ERR --TIMEOUT must be an integer"),
    (("--TIMEOUT",), r"^ERR option --TIMEOUT needs a value$"),
    (("hello", "world"), r"^ERR syntax error at 'hello'$"),
    (("--",), r"^ERR '--' must be followed by exactly one argument, the input$"),
    (("--", "a", "b"), r"^ERR '--' must be followed by exactly one argument, the input$"),
    (("--VERBOSE", "--", "a", "--VERBOSE"), r"^ERR '--' must be followed by exactly one"),
])
def test_bad_run_options_are_refused_without_a_request(r, api, llm, args, match):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    expect_error(r, RUN, "a", *args, match=match)
    assert api.requests == []


@pytest.mark.parametrize("text", ["--VERBOSE", "--", "--no such option", "-- and more"])
def test_after_double_dash_the_input_may_look_like_an_option(r, api, llm, text):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    assert r.execute_command(RUN, "a", "--", text) == b"echo: " + text.encode()
    reply = r.execute_command(RUN, "a", "--VERBOSE", "--", text)
    assert reply[:2] == [b"answer", b"echo: " + text.encode()]


def test_run_on_a_missing_app_is_an_error(r, api):
    expect_error(r, RUN, "nope", "hi", match=r"^ERR no app at key 'nope'$")
    assert r.exists("nope") == 0


def test_run_on_another_type_is_wrongtype(r, api, llm, store):
    r.set("str", "v")
    expect_error(r, RUN, "str", "hi", code="WRONGTYPE")
    expect_error(r, RUN, store, "hi", code="WRONGTYPE")
    expect_error(r, RUN, llm, "hi", code="WRONGTYPE")
    assert api.requests == []


def test_run_with_a_missing_llm_names_the_key(r, api, llm, store):
    r.execute_command(CREATE_APP, "a", "--LLM", "ghost")
    expect_error(r, RUN, "a", "hi", match=r"^ERR an LLM key 'ghost' does not exist$")
    r.execute_command(CREATE_APP, "b", "--LLM", store)
    expect_error(r, RUN, "b", "hi", match=r"^ERR key 'docs' does not hold an LLM$")
    assert api.requests == []


def test_run_inside_multi_is_refused_at_once(r, api, llm):
    r.execute_command(CREATE_APP, "a", "--LLM", llm)
    pipe = r.pipeline(transaction=True)
    pipe.execute_command(RUN, "a", "hi")
    pipe.ping()
    run_reply, pong = pipe.execute(raise_on_error=False)
    assert isinstance(run_reply, redis.ResponseError)
    assert "MULTI" in str(run_reply) and pong is True
    assert api.requests == []


def test_run_timeout_replies_nil_and_the_chat_turn_is_still_recorded(r, api, store):
    make_chat(r, summary_cnt=0)
    api.delay(1.0)
    start = time.monotonic()
    assert r.execute_command(RUN, "chat", "--TIMEOUT", 100, "slow") is None
    assert time.monotonic() - start < 0.9
    deadline = time.monotonic() + 5
    while history_of(r) == []:
        assert time.monotonic() < deadline, "the turn was never recorded"
        time.sleep(0.02)
    assert history_of(r) == [("user", "slow"), ("assistant", "echo: slow")]
