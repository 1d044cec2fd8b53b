"""Talk to loadonce with the `openai` client, unchanged: serve a model that generates text
(and one that embeds text, for `embed`), then run `python docs/examples/openai_client.py`
(needs `pip install openai`)."""

import sys

from openai import OpenAI


def chat(base_url: str = "http://127.0.0.1:8000/v1", model: str = "writer") -> str:
    # api_key: one of the server's inference keys if it has any (sent as a Bearer token).
    client = OpenAI(base_url=base_url, api_key="unused-without-keys")
    print([listed.id for listed in client.models.list()])  # the models that generate or embed
    answer = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16)
    print(answer.choices[0].text, answer.choices[0].finish_reason, answer.usage)
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_completion_tokens=32,
        stream=True,  # Server-Sent Events: each chunk as the model generates it
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def embed(base_url: str = "http://127.0.0.1:8000/v1", model: str = "encoder") -> list[float]:
    client = OpenAI(base_url=base_url, api_key="unused-without-keys")
    vectors = client.embeddings.create(model=model, input=["a first text", "a second"])
    return vectors.data[0].embedding  # the mean of the text's token vectors


if __name__ == "__main__":
    print(chat(*sys.argv[1:]))
