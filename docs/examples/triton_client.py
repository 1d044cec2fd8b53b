"""Query loadonce with NVIDIA's tritonclient, unchanged: start `loadonce serve --demo`, then
run `python docs/examples/triton_client.py` (needs `pip install "tritonclient[http]"`)."""

import sys

import numpy as np
import tritonclient.http as httpclient


def classify(url: str = "127.0.0.1:8000") -> list[str]:
    client = httpclient.InferenceServerClient(url)
    assert client.is_server_ready()
    print(client.get_model_metadata("iris")["inputs"])  # [{'name': 'input', 'datatype': 'FP64', ...
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    features = httpclient.InferInput("input", list(flowers.shape), "FP64")
    features.set_data_from_numpy(flowers)  # sent as binary tensor data, the client's default
    result = client.infer("iris", [features])
    return [label.decode() for label in result.as_numpy("label")]  # ['setosa', 'virginica']


if __name__ == "__main__":
    print(classify(*sys.argv[1:]))
