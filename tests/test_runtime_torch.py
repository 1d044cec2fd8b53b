"""PyTorch: TorchScript and safetensors + factory; served outputs equal the module's own."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

import loadonce
from tests.loaders import build_mlp
from tests.servers import run_cli, serving

ROWS = [[0.1, -1.2, 3.3, 0.5], [2.0, 0.0, -0.7, 1.1]]


def _expected(module: torch.nn.Module, rows: list[list[float]]) -> list[list[float]]:
    with torch.inference_mode():
        result: list[list[float]] = module(torch.tensor(rows, dtype=torch.float32)).tolist()
    return result


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    torch.manual_seed(7)  # not the factory's default initialisation: loading must matter
    module: torch.nn.Module = build_mlp().eval()
    return module


def _script(module: torch.nn.Module, path: Path) -> Path:
    # PyTorch 2.13 deprecates TorchScript; users still bring such files, so the tests make one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory: pytest.TempPathFactory, trained: torch.nn.Module) -> Path:
    return _script(trained, tmp_path_factory.mktemp("torch") / "mlp.pt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, trained: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("torch") / "mlp.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        trained, (torch.zeros(2, 4),), dynamic_shapes={"input": {0: batch}}
    )
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def state_dict(tmp_path_factory: pytest.TempPathFactory, trained: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("torch") / "mlp.safetensors"
    save_file(trained.state_dict(), str(path))
    return path


@pytest.fixture
def client(torchscript: Path, state_dict: Path, exported: Path) -> Iterator[TestClient]:
    specs = [
        loadonce.ModelSpec(name="exported", artifact=exported),
        loadonce.ModelSpec(name="scripted", artifact=torchscript, input_shape=(4,)),
        loadonce.ModelSpec(name="any_width", artifact=torchscript, input_shape=[-1]),
        loadonce.ModelSpec(
            name="weights",
            artifact=state_dict,
            options={"factory": "tests.loaders:build_mlp", "threads": 1},
        ),
    ]
    with TestClient(loadonce.create_app(specs)) as test_client:
        yield test_client


def test_torchscript_outputs_equal_the_modules_own(
    client: TestClient, trained: torch.nn.Module
) -> None:
    response = client.post("/models/scripted/predict", json={"inputs": ROWS})
    assert response.status_code == 200
    assert response.json()["outputs"] == _expected(trained, ROWS)
    info = client.get("/models/scripted").json()
    assert info["runtime"] == "torch"
    assert info["concurrency"] == "shared"


def test_an_exported_program_checks_the_shape_it_recorded(
    client: TestClient, trained: torch.nn.Module
) -> None:
    response = client.post("/models/exported/predict", json={"inputs": ROWS})
    assert response.json()["outputs"] == _expected(trained, ROWS)
    info = client.get("/models/exported").json()
    assert info["input_shape"] == [4]
    assert info["input_dtype"] == "float32"
    wrong = client.post("/models/exported/predict", json={"inputs": [[1.0, 2.0, 3.0]]})
    assert wrong.status_code == 400
    assert "shape [4]" in wrong.json()["error"]


def test_safetensors_state_dict_loads_into_the_factorys_module(
    client: TestClient, trained: torch.nn.Module
) -> None:
    response = client.post("/models/weights/predict", json={"inputs": ROWS})
    assert response.json()["outputs"] == _expected(trained, ROWS)
    one = client.post("/models/weights/predict", json={"inputs": [ROWS[0]]})
    assert one.json()["outputs"] == _expected(trained, ROWS[:1])


def test_a_private_copy_of_a_half_precision_file_takes_the_modules_dtype(
    tmp_path: Path, trained: torch.nn.Module
) -> None:
    # share = "off": the weights are the worker's own copy, in the dtype the module declares
    # (as copying into the module's own tensors gives), whatever the file stores.
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in trained.state_dict().items()}, str(path))
    spec = loadonce.ModelSpec(
        name="half", artifact=path, share="off", options={"factory": "tests.loaders:build_mlp"}
    )
    rounded = build_mlp().eval()
    rounded.load_state_dict({k: v.half().float() for k, v in trained.state_dict().items()})
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/half/predict", json={"inputs": ROWS})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == _expected(rounded, ROWS)
        assert client.get("/models/half").json()["weights_shared"] is False


@pytest.mark.parametrize("share", ["mmap", "off"])
def test_a_buffer_the_file_lacks_is_the_factorys_own(
    state_dict: Path, trained: torch.nn.Module, share: str
) -> None:
    # The file holds the layers' weights under "layers." names; the factor buffer is not in it.
    path = state_dict.with_name(f"doubling-{share}.safetensors")
    save_file({f"layers.{k}": v for k, v in trained.state_dict().items()}, str(path))
    spec = loadonce.ModelSpec(
        name="doubling",
        artifact=path,
        share=share,
        options={"factory": "tests.loaders:build_doubling_mlp"},
    )
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/doubling/predict", json={"inputs": ROWS})
    assert answer.status_code == 200, answer.text
    doubled = [[2 * x for x in row] for row in _expected(trained, ROWS)]
    assert answer.json()["outputs"] == doubled  # doubling a float is exact


def test_a_declared_input_shape_makes_a_wrong_shape_a_400(client: TestClient) -> None:
    response = client.post("/models/scripted/predict", json={"inputs": [[1.0, 2.0]]})
    assert response.status_code == 400
    assert "shape [4]" in response.json()["error"]
    ragged = client.post("/models/weights/predict", json={"inputs": [[1.0, 2.0], [1.0]]})
    assert ragged.status_code == 400
    assert client.get("/models/any_width").json()["input_shape"] == [None]
    nested = client.post("/models/any_width/predict", json={"inputs": [[[1.0] * 4]]})
    assert nested.status_code == 400
    assert "an array of shape [*] of numbers" in nested.json()["error"]


class TwoHeads(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(dim=1), x * 2


def test_a_tuple_of_outputs_becomes_an_object_per_example(tmp_path: Path) -> None:
    path = _script(TwoHeads(), tmp_path / "heads.pt")
    spec = loadonce.ModelSpec(name="heads", artifact=path)
    with TestClient(loadonce.create_app([spec])) as client:
        outputs = client.post("/models/heads/predict", json={"inputs": [[1, 2], [3, 4]]}).json()
    assert outputs["outputs"] == [
        {"output0": 3.0, "output1": [2.0, 4.0]},
        {"output0": 7.0, "output1": [6.0, 8.0]},
    ]


def test_an_exported_programs_outputs_are_tensors_of_their_own(tmp_path: Path) -> None:
    """Under the Open Inference Protocol each of a tuple's outputs is its own tensor, in its
    own datatype, as metadata lists it (a list per example was one tensor of JSON text)."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(TwoHeads(), (torch.ones(2, 2),), dynamic_shapes=({0: batch},))
    path = tmp_path / "heads.pt2"
    torch.export.save(program, str(path))
    spec = loadonce.ModelSpec(name="heads", artifact=path)
    with TestClient(loadonce.create_app([spec])) as client:
        metadata = client.get("/v2/models/heads").json()["outputs"]
        assert metadata == [
            {"name": "output0", "datatype": "FP32", "shape": [-1]},
            {"name": "output1", "datatype": "FP32", "shape": [-1, 2]},
        ]
        tensor = {"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}
        answer = client.post("/v2/models/heads/infer", json={"inputs": [tensor]}).json()
        assert "outputs" in answer, answer
    assert [(o["name"], o["datatype"], o["shape"], o["data"]) for o in answer["outputs"]] == [
        ("output0", "FP32", [2], [3.0, 7.0]),
        ("output1", "FP32", [2, 2], [2.0, 4.0, 6.0, 8.0]),
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs options.factory"),
        ({"factory": "tests.loaders:echo"}, "not a torch.nn.Module"),
        ({"factory": "tests.test_runtime_torch:TwoHeads"}, "unexpected ['0.bias'"),
    ],
)
def test_safetensors_without_a_fitting_factory_fails_the_load(
    state_dict: Path, options: dict[str, Any], message: str
) -> None:
    spec = loadonce.ModelSpec(name="w", artifact=state_dict, options=options)
    with pytest.raises(loadonce.ModelLoadError) as failure:
        TestClient(loadonce.create_app([spec])).__enter__()
    assert message in str(failure.value)


def test_a_pickled_module_is_not_a_torchscript_file(
    tmp_path: Path, trained: torch.nn.Module
) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(trained, path)
    spec = loadonce.ModelSpec(name="p", artifact=path)
    with pytest.raises(loadonce.ModelLoadError, match="not a TorchScript file"):
        TestClient(loadonce.create_app([spec])).__enter__()


def test_asking_for_cuda_without_it_is_a_clear_error(torchscript: Path) -> None:
    assert not torch.cuda.is_available(), "this test runs on the CPU build of torch"
    spec = loadonce.ModelSpec(name="g", artifact=torchscript, options={"device": "cuda"})
    with pytest.raises(loadonce.ModelLoadError, match="device 'cuda' was asked for"):
        TestClient(loadonce.create_app([spec])).__enter__()


def test_cli_serves_an_exported_program_from_two_workers(
    tmp_path: Path, exported: Path, trained: torch.nn.Module
) -> None:
    with serving([str(exported), "--workers", "2"], tmp_path) as server:
        response = httpx.post(f"{server.url}/models/mlp/predict", json={"inputs": ROWS})
    assert response.json()["outputs"] == _expected(trained, ROWS)


def test_a_corrupt_exported_program_fails_startup_in_one_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a zip archive" * 100)
    finished = run_cli(tmp_path, "serve", str(corrupt), "--port", "0", cwd=tmp_path)
    assert finished.returncode == 3
    output = finished.stdout + finished.stderr
    assert "Traceback" not in output, output
    [failure] = [line for line in output.splitlines() if "failed to load" in line]
    assert f"model 'corrupt' failed to load from {corrupt}" in failure
    assert len([line for line in output.splitlines() if not line.startswith("INFO")]) == 1, output


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        summed: torch.Tensor = self.linear(x) + y.sum(dim=1, keepdim=True)
        return summed


def test_a_two_input_exported_program_takes_named_inputs_on_both_protocols(tmp_path: Path) -> None:
    module = TwoInputs().eval()
    batch = torch.export.Dim("batch")
    example = (torch.ones(2, 3), torch.ones(2, 4))
    program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}))
    path = tmp_path / "two.pt2"
    torch.export.save(program, path)
    x, y = torch.randn(3, 3), torch.randn(3, 4)
    with torch.inference_mode():
        expected = module(x, y).numpy()
    spec = loadonce.ModelSpec(name="two", artifact=path)
    with TestClient(loadonce.create_app([spec])) as client:
        inputs = client.get("/models/two").json()["inputs"]
        assert inputs == [
            {"name": "x", "dtype": "float32", "shape": [None, 3]},
            {"name": "y", "dtype": "float32", "shape": [None, 4]},
        ]
        examples = [{"x": x[i].tolist(), "y": y[i].tolist()} for i in range(3)]
        answer = client.post("/models/two/predict", json={"inputs": examples})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], expected, rtol=1e-5)
        tensors = [
            {"name": "x", "shape": [3, 3], "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "y", "shape": [3, 4], "datatype": "FP32", "data": y.ravel().tolist()},
        ]
        v2 = client.post("/v2/models/two/infer", json={"inputs": tensors}).json()
        np.testing.assert_allclose(
            np.reshape(v2["outputs"][0]["data"], (3, 2)), expected, rtol=1e-5
        )
        missing = client.post("/models/two/predict", json={"inputs": [{"x": [1.0, 2.0, 3.0]}]})
        assert missing.status_code == 400
        assert "missing input(s) y" in missing.json()["error"]


class DictOfTensors(torch.nn.Module):
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return features["a"] * 2 + features["b"].float().sum(-1, keepdim=True)


class TupleOfTensors(torch.nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0] - pair[1]


class KeywordTensor(torch.nn.Module):
    def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
        return x * mask.float()


def _nested_program(kind: str) -> tuple[Any, tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    """A program exported with nested or keyword inputs; the module, the example call's
    arguments and keyword arguments, and the named inputs of two examples."""
    batch = torch.export.Dim("batch")
    a, b = torch.randn(2, 3), torch.tensor([[1, 2], [3, 4]])
    if kind == "dict":
        args: tuple[Any, ...] = ({"a": a, "b": b},)
        program = torch.export.export(
            DictOfTensors(), args, dynamic_shapes=({"a": {0: batch}, "b": {0: batch}},)
        )
        return program, args, {}, {"features_a": a, "features_b": b}
    if kind == "tuple":
        args = ((a, a * 3),)
        program = torch.export.export(
            TupleOfTensors(), args, dynamic_shapes=(({0: batch}, {0: batch}),)
        )
        return program, args, {}, {"pair_0": a, "pair_1": a * 3}
    mask = torch.tensor([[True, False, True], [False, True, True]])
    program = torch.export.export(
        KeywordTensor(),
        (a,),
        kwargs={"mask": mask},
        dynamic_shapes={"x": {0: batch}, "mask": {0: batch}},
    )
    return program, (a,), {"mask": mask}, {"x": a, "mask": mask}


@pytest.mark.parametrize("kind", ["dict", "tuple", "keyword"])
def test_a_program_exported_with_nested_or_keyword_inputs_answers(
    tmp_path: Path, kind: str
) -> None:
    """A program exported with a dict or tuple of tensors, or a keyword argument, lists one
    named input per tensor (features_a, pair_0, mask), and loaded; but it was called with
    one positional tensor per input, and every request failed inside it (a 500: "Trying to
    flatten user inputs with exported input tree spec"). It is now called as it was
    exported, and answers as the program does, on both protocols and batched."""
    program, args, kwargs, named = _nested_program(kind)
    path = tmp_path / f"{kind}.pt2"
    torch.export.save(program, path)
    with torch.inference_mode():
        expected = program.module()(*args, **kwargs).numpy()
    batching = loadonce.Batching(max_batch_size=8, max_wait_ms=50)
    spec = loadonce.ModelSpec(name="nested", artifact=path, batching=batching)
    with TestClient(loadonce.create_app([spec])) as client:
        inputs = client.get("/models/nested").json()["inputs"]
        assert [i["name"] for i in inputs] == list(named)
        examples = [{name: value[i].tolist() for name, value in named.items()} for i in range(2)]
        answer = client.post("/models/nested/predict", json={"inputs": examples})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], expected, rtol=1e-6)
        datatypes = {torch.float32: "FP32", torch.int64: "INT64", torch.bool: "BOOL"}
        tensors = [
            {
                "name": name,
                "shape": list(value.shape),
                "datatype": datatypes[value.dtype],
                "data": value.ravel().tolist(),
            }
            for name, value in named.items()
        ]
        infer = client.post("/v2/models/nested/infer", json={"inputs": tensors})
        assert infer.status_code == 200, infer.text
        [output] = infer.json()["outputs"]
        np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected, rtol=1e-6)


def test_a_program_exported_with_a_fixed_batch_answers_any_number_of_examples(
    tmp_path: Path,
) -> None:
    module = torch.nn.Linear(3, 2).eval()
    program = torch.export.export(module, (torch.ones(4, 3),))  # the batch is fixed at 4
    path = tmp_path / "fixed.pt2"
    torch.export.save(program, path)
    rows = torch.randn(6, 3)
    with torch.inference_mode():
        expected = module(rows).numpy()
    spec = loadonce.ModelSpec(name="fixed", artifact=path)
    with TestClient(loadonce.create_app([spec])) as client:
        for count in (1, 4, 6):
            answer = client.post("/models/fixed/predict", json={"inputs": rows[:count].tolist()})
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["outputs"], expected[:count], rtol=1e-5)
        # Its metadata says so: the output's batch was listed as the exported 4 ([4, 2]).
        [output] = client.get("/v2/models/fixed").json()["outputs"]
        assert output["shape"] == [-1, 2]
        tensor = {"name": "input", "datatype": "FP32", "shape": [6, 3]}
        v2 = client.post(
            "/v2/models/fixed/infer", json={"inputs": [{**tensor, "data": rows.ravel().tolist()}]}
        ).json()
        assert v2["outputs"][0]["shape"] == [6, 2]


class OneOfTuple(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x + 1,)


def test_a_program_returning_a_tuple_of_one_lists_it(tmp_path: Path) -> None:
    """Its metadata listed no outputs while each answer held output0."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(OneOfTuple(), (torch.ones(2, 3),), dynamic_shapes=({0: batch},))
    path = tmp_path / "one.pt2"
    torch.export.save(program, path)
    with TestClient(loadonce.create_app([loadonce.ModelSpec(name="one", artifact=path)])) as client:
        metadata = client.get("/v2/models/one").json()["outputs"]
        assert metadata == [{"name": "output0", "datatype": "FP32", "shape": [-1, 3]}]
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [0, 1, 2]}
        answer = client.post("/v2/models/one/infer", json={"inputs": [tensor]}).json()
        assert [(o["name"], o["shape"]) for o in answer["outputs"]] == [("output0", [1, 3])]


@pytest.mark.parametrize("kind", ["torchscript", "state dict"])
def test_a_module_of_several_inputs_fails_its_load_unless_exported(
    tmp_path: Path, kind: str
) -> None:
    """loadonce calls a TorchScript or state-dict module with one tensor: one whose forward
    needs two loaded, then every request failed (a 500, or a 400 about a "rectangular array"
    for named inputs)."""
    if kind == "torchscript":
        spec = loadonce.ModelSpec(name="two", artifact=_script(TwoInputs(), tmp_path / "two.pt"))
    else:
        path = tmp_path / "two.safetensors"
        save_file(TwoInputs().state_dict(), str(path))
        factory = {"factory": "tests.test_runtime_torch:TwoInputs"}
        spec = loadonce.ModelSpec(name="two", artifact=path, options=factory)
    with pytest.raises(loadonce.ModelLoadError) as failed, TestClient(loadonce.create_app([spec])):
        pass
    message = str(failed.value)
    assert "its forward takes 2 inputs (x, y)" in message
    assert "torch.export" in message
    assert ".pt2" in message


class DictInput(torch.nn.Module):
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return features["x"] * 2


class TupleInput(torch.nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0] + pair[1]


class ListInput(torch.nn.Module):
    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0]


class CountInput(torch.nn.Module):
    def forward(self, count: int) -> torch.Tensor:
        return torch.ones(count)


@pytest.mark.parametrize("kind", ["torchscript", "state dict"])
@pytest.mark.parametrize(
    ("module", "script", "annotated"),
    [
        (DictInput, "features as Dict[str, Tensor]", "features as dict[str, Tensor]"),
        (TupleInput, "pair as Tuple[Tensor, Tensor]", "pair as tuple[Tensor, Tensor]"),
        (ListInput, "parts as List[Tensor]", "parts as list[Tensor]"),
        (CountInput, "count as int", "count as int"),
    ],
    ids=["dict", "tuple", "list", "int"],
)
def test_an_input_that_is_not_a_tensor_fails_its_load(
    tmp_path: Path, kind: str, module: type[torch.nn.Module], script: str, annotated: str
) -> None:
    """loadonce calls a TorchScript or state-dict module with one tensor: one whose forward
    takes a dict, tuple or list of tensors (or a number) loaded, and every request was a 500
    ("Expected a value of type 'Dict[str, Tensor]'"). Its schema, or its forward's
    annotation, says so: the load fails, naming it."""
    if kind == "torchscript":
        spec = loadonce.ModelSpec(name="other", artifact=_script(module(), tmp_path / "o.pt"))
        described = script
    else:
        path = tmp_path / "other.safetensors"
        save_file({}, str(path))  # the modules hold no weights
        factory = {"factory": f"tests.test_runtime_torch:{module.__name__}"}
        spec = loadonce.ModelSpec(name="other", artifact=path, options=factory)
        described = annotated
    with pytest.raises(loadonce.ModelLoadError) as failed, TestClient(loadonce.create_app([spec])):
        pass
    message = str(failed.value)
    assert f"its forward takes {described}, not a tensor" in message
    assert ".pt2" in message


def test_named_inputs_sent_to_a_model_of_one_input_are_said_so(torchscript: Path) -> None:
    spec = loadonce.ModelSpec(name="mlp", artifact=torchscript)
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/mlp/predict", json={"inputs": [{"x": [1.0, 2.0]}]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "this model takes one input tensor" in error
    assert "rectangular" not in error


def test_a_torchscript_file_from_the_command_line_takes_its_input_shape(tmp_path: Path) -> None:
    """TorchScript records no shape: --input-shape gives it, so a wrong width is a 400 (it was
    a 500 from inside the module) and a single example is told from a list of them."""
    path = _script(build_mlp().eval(), tmp_path / "mlp.pt")
    with serving([str(path), "--input-shape", "4", "--input-dtype", "float32"], tmp_path) as server:
        url = f"{server.url}/models/mlp/predict"
        wrong = httpx.post(url, json={"inputs": [[1.0, 2.0]]})
        assert wrong.status_code == 400, wrong.text
        assert "shape [4]" in wrong.json()["error"]
        single = httpx.post(url, json={"inputs": [1.0, 2.0, 3.0, 4.0]}).json()["outputs"]
        assert len(single) == 1
        assert len(single[0]) == 3
    refused = run_cli(tmp_path, "serve", "--demo", "--input-shape", "4")
    assert refused.returncode == 2
    assert "describe the one model a single artifact or loader serves" in refused.stderr


def test_without_a_declared_shape_the_warm_up_tells_a_wrong_request_from_a_failing_model(
    tmp_path: Path,
) -> None:
    """A TorchScript module records no shape; its warm-up example is one it answers, so a
    request of another shape that the module fails on is the request's fault: a 400 naming
    both shapes, not a 500."""
    path = _script(build_mlp().eval(), tmp_path / "mlp.pt")
    spec = loadonce.ModelSpec(name="mlp", artifact=path, warmup=[[0.5, 0.5, 0.5, 0.5]])
    with TestClient(loadonce.create_app([spec])) as client:
        wrong = client.post("/models/mlp/predict", json={"inputs": [[1.0, 2.0]]})
        assert wrong.status_code == 400, wrong.text
        assert wrong.json()["error"].startswith(
            "invalid inputs: the model failed on examples of shape [2]; it answers examples of "
            "shape [4]"
        )
        right = client.post("/models/mlp/predict", json={"inputs": [[1.0, 2.0, 3.0, 4.0]]})
        assert right.status_code == 200


@pytest.mark.parametrize("bfloat_input", [False, True], ids=["bf16-out", "bf16-in-and-out"])
def test_a_bfloat16_program_is_served_in_float32(tmp_path: Path, bfloat_input: bool) -> None:
    """bfloat16 has no NumPy dtype: such a program's tensors are read and answered as
    float32, which holds every bfloat16 value, and cast to the program's dtype on the way in
    (it was ready, but its metadata and every request a 500, or a 400 blaming the client)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3).to(torch.bfloat16)
    module: torch.nn.Module = layer if bfloat_input else _CastIn(layer)
    dtype = torch.bfloat16 if bfloat_input else torch.float32
    batch = torch.export.Dim("batch")
    example = torch.ones(2, 4, dtype=dtype)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    path = tmp_path / "bf16.pt2"
    torch.export.save(program, path)
    rows = [[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]]
    with torch.inference_mode():
        expected = module(torch.tensor(rows, dtype=dtype)).float().numpy()
    with TestClient(loadonce.create_app([loadonce.ModelSpec(name="m", artifact=path)])) as client:
        answer = client.post("/models/m/predict", json={"inputs": rows})
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(np.array(answer.json()["outputs"]), expected)
        described = client.get("/v2/models/m").json()
        assert [t["datatype"] for t in described["inputs"] + described["outputs"]] == ["FP32"] * 2
        tensor = {"name": "input", "datatype": "FP32", "shape": [2, 4]}
        infer = client.post("/v2/models/m/infer", json={"inputs": [{**tensor, "data": rows}]})
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == expected.ravel().tolist()


class _CastIn(torch.nn.Module):
    """float32 in, the bfloat16 layer's bfloat16 out."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.to(torch.bfloat16))  # type: ignore[no-any-return]


def test_a_torchscript_file_named_pt2_is_said_so(tmp_path: Path, torchscript: Path) -> None:
    """PyTorch's own message said to read the warnings above it, and there were none."""
    renamed = tmp_path / "mlp.pt2"
    renamed.write_bytes(torchscript.read_bytes())
    spec = loadonce.ModelSpec(name="m", artifact=renamed)
    refused = pytest.raises(loadonce.ModelLoadError, match=r"a TorchScript file, not a torch\.")
    with refused, TestClient(loadonce.create_app([spec])):
        pass


class _ScaledBy(torch.nn.Module):
    """rows * a scalar, and the scaled rows' overall sum (a scalar)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = x * t
        return scaled, scaled.sum()


class _Squared(torch.nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * t


class _RowsAndTheirSum(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x.sum()


def _program_with_scalars(kind: str, path: Path) -> tuple[Path, list[Any], list[Any]]:
    """A program exported with a scalar input or output, the examples sent, and what the
    module answers for each (a scalar input's examples each called on their own)."""
    batch = torch.export.Dim("batch")
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    module: torch.nn.Module
    calls: list[tuple[torch.Tensor, ...]]
    if kind == "scalar input beside a batch":
        module = _ScaledBy()
        program = torch.export.export(
            module, (torch.ones(2, 3), torch.tensor(2.0)), dynamic_shapes=({0: batch}, None)
        )
        examples: list[Any] = [{"x": row, "t": t} for row, t in zip(rows, [3.0, -0.5], strict=True)]
        calls = [(torch.tensor([e["x"]]), torch.tensor(e["t"])) for e in examples]
    elif kind == "scalar input alone":
        module = _Squared()
        program = torch.export.export(module, (torch.tensor(2.0),))
        examples = [3.0, -0.5]
        calls = [(torch.tensor(value),) for value in examples]
    else:  # a scalar output beside a batch of rows: the whole request's
        module = _RowsAndTheirSum()
        program = torch.export.export(module, (torch.ones(2, 3),), dynamic_shapes=({0: batch},))
        examples = rows
        calls = [(torch.tensor(rows),)]
    torch.export.save(program, str(path))
    expected: list[Any] = []
    with torch.inference_mode():
        for call in calls:
            result = module(*call)
            if kind == "scalar input alone":
                expected.append(result.item())
            elif kind == "scalar input beside a batch":
                expected.append({"output0": result[0][0].tolist(), "output1": result[1].item()})
            else:
                expected += [
                    {"output0": row, "output1": result[1].item()} for row in result[0].tolist()
                ]
    return path, examples, expected


@pytest.mark.parametrize("batching", [None, True, False])
@pytest.mark.parametrize(
    "kind", ["scalar input beside a batch", "scalar input alone", "scalar output"]
)
def test_scalars_of_an_exported_program_have_no_batch_dimension(
    tmp_path: Path, kind: str, batching: bool | None
) -> None:
    """A scalar input (a threshold, a temperature) holds one value per example and the
    program runs each example on its own; a scalar output (a sum over the batch) goes whole
    to every example of its call, and such a program is not batched by default. Both were
    fed or cut as batches: a 500 for any request of two examples (or each example got every
    example's answer)."""
    path, examples, expected = _program_with_scalars(kind, tmp_path / "scalars.pt2")
    spec = loadonce.ModelSpec(name="m", artifact=path, batching=batching)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/v2/models/m").json()
        for tensor in described["inputs"] + described["outputs"]:
            assert tensor["shape"][0] == -1, described  # one value per example, batch first
        if batching is None:
            batched = client.get("/models/m").json()["queue"]["max_batch_size"] > 1
            assert batched == (kind != "scalar output")
        answer = client.post("/models/m/predict", json={"inputs": examples})
        assert answer.status_code == 200, answer.text
        # Values float32 holds exactly: the answers are the module's, bit for bit.
        assert answer.json()["outputs"] == expected


class _Embedding(torch.nn.Module):
    """Token ids (int64) in, the sum of their vectors out: a module that takes no floats."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors = torch.nn.Embedding(10, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        summed: torch.Tensor = self.vectors(ids).sum(1)
        return summed


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [("torchscript", "int64"), ("torchscript", None), ("safetensors", None)],
    ids=["torchscript-int64", "torchscript-float32", "safetensors-float32"],
)
def test_a_module_without_a_declared_shape_describes_the_input_it_takes(
    tmp_path: Path, kind: str, dtype: str | None, trained: torch.nn.Module
) -> None:
    """A TorchScript or state-dict module records no input, and without input_shape /v2
    metadata listed none, though infer took a tensor named "input" of options.input_dtype
    (float32 unless set): a client reading metadata could not know what to send. It lists
    that input (any shape: [-1]), and infer with it answers what the module answers."""
    options: dict[str, Any] = {} if dtype is None else {"input_dtype": dtype}
    rows: Any = [[1, 2], [3, 9]] if dtype == "int64" else ROWS
    module: torch.nn.Module = _Embedding().eval() if dtype == "int64" else trained
    if kind == "torchscript":
        path = _script(module, tmp_path / "module.pt")
    else:
        path = tmp_path / "module.safetensors"
        save_file(module.state_dict(), str(path))
        options["factory"] = "tests.loaders:build_mlp"
    with torch.inference_mode():
        expected = module(torch.tensor(rows)).tolist()
    datatype = "INT64" if dtype == "int64" else "FP32"
    spec = loadonce.ModelSpec(name="m", artifact=path, options=options)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/v2/models/m").json()["inputs"]
        assert described == [{"name": "input", "datatype": datatype, "shape": [-1]}]
        tensor = {"name": "input", "datatype": datatype, "shape": [2, len(rows[0])]}
        body = {"inputs": [{**tensor, "data": [v for row in rows for v in row]}]}
        infer = client.post("/v2/models/m/infer", json=body)
        assert infer.status_code == 200, infer.text
        [output] = infer.json()["outputs"]
        assert output["data"] == pytest.approx([v for row in expected for v in row])
        answer = client.post("/models/m/predict", json={"inputs": rows})
        assert answer.json()["outputs"] == [pytest.approx(row) for row in expected]
        other = {**body["inputs"][0], "datatype": "FP64" if dtype == "int64" else "INT64"}
        refused = client.post("/v2/models/m/infer", json={"inputs": [other]})
        assert refused.status_code == 400, refused.text
        assert f"the model takes {datatype}" in refused.json()["error"]


class _NestedOutputs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Any:
        return {"double": x * 2, "pair": (x + 1, x.sum(1))}


class _NoneOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Any:
        return x * 2, None


@pytest.mark.parametrize(
    ("module", "said"),
    [(_NestedOutputs(), "returns nested outputs"), (_NoneOutput(), "returns None as output 1")],
    ids=["nested", "none"],
)
def test_a_program_whose_outputs_are_not_flat_tensors_fails_its_load(
    tmp_path: Path, module: torch.nn.Module, said: str
) -> None:
    """A program returning a dict that holds a tuple, or None beside a tensor, loaded and
    failed every request with a 500 (an AttributeError cutting it into rows): the load
    fails, in one line that says why."""
    path = tmp_path / "program.pt2"
    dims = {"x": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(module, (torch.zeros(2, 3),), dynamic_shapes=dims), path)
    spec = loadonce.ModelSpec(name="m", artifact=path)
    with pytest.raises(loadonce.ModelLoadError) as failed:
        TestClient(loadonce.create_app([spec])).__enter__()
    message = str(failed.value)
    assert said in message
    assert str(path) in message
    assert "\n" not in message
