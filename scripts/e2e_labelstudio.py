"""Candor against a real Label Studio, end to end (`make e2e-labelstudio`).

Run by the Python of build/labelstudio-venv (PyPI `label-studio`, which brings label-studio-sdk);
Candor runs from the product's virtual environment (``--candor``, its `candor` command):

1. Label Studio starts on loopback with SQLite in a fresh folder, a user with a legacy API token.
2. Through label-studio-sdk: a project whose <Choices> are Fashion-MNIST's ten classes, two more
   annotators, 60 image tasks (local files) each carrying three annotators' choices, which
   disagree on a third of the tasks (one annotation per task cancelled on some tasks as well).
3. `candor serve --embedded` starts (SQLite, an in-process worker).
4. `candor remote labelstudio-import` reads the project (export, label config, images) into a new
   dataset; a small job (the tiny backbone) cleans it; `candor remote labelstudio-push` imports
   its labels back as predictions. Read back through the SDK: every task has one prediction, of
   the classifier's version, on the right task, with a label among the task's annotated choices.
5. Candor is connected to the project as its ML backend (basic auth, the API key as password;
   extra params with Label Studio's URL and token) and Label Studio is asked for a prediction on
   a task: Label Studio calls Candor's /predict, which fetches the task image from Label Studio.
6. The webhook Label Studio made for the model, given the API key as a header, carries an
   ANNOTATION_CREATED event to Candor, which puts the annotation into the dataset (the task was not
   in it: it becomes an item, its image fetched from Label Studio) and starts a new job on the
   dataset (the connection's extra params say `train`); the job is cancelled at once.

Prints each step's time and the total; exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from label_studio_sdk import LabelStudio

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
N_TASKS = 60
TOKEN = "e2e-legacy-token-0123456789"
PASSWORD = "e2e-password-0123"
JOB_CONFIG = {
    "backbone": "tiny",
    "prompt": {"n_ctx": 4},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.01},
    "features": {"batch_size": 16},
}
STARTED = time.monotonic()
# Candor's processes run this tree's code whatever the virtual environment's install points at
CANDOR_ENV = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def step(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f} s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url} exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def run(cmd: list[str], env: dict[str, str]) -> str:
    """A command's stdout; its stderr and exit on failure."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"FAILED: {' '.join(cmd[:3])} ... exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout.strip()


def check(ok: bool, message: str) -> None:
    if not ok:
        sys.exit(f"FAILED: {message}")


def label_config() -> str:
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in CLASSES)
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        f'  <Choices name="garment" toName="image" choice="single">\n{choices}\n  </Choices>\n'
        "</View>"
    )


def write_images(candor_python: Path, folder: Path) -> list[int]:
    """61 Fashion-MNIST test images as PNGs (the product's loader): 60 tasks and one more for the
    ML backend; their true classes."""
    code = (
        "import json, sys\n"
        "from PIL import Image\n"
        "from app.ml.datasets import load_fashion_mnist\n"
        "x, y = load_fashion_mnist('test')\n"
        f"for k in range({N_TASKS + 1}):\n"
        "    Image.fromarray(x[k]).save(f'{sys.argv[1]}/img{k}.png')\n"
        f"print(json.dumps([int(v) for v in y[:{N_TASKS}]]))\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [str(candor_python), "-c", code, str(folder)],
        cwd=ROOT,
        env=CANDOR_ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def choice(user: int, label: str, *, cancelled: bool = False) -> dict:
    return {
        "completed_by": user,
        "was_cancelled": cancelled,
        "result": [
            {"from_name": "garment", "to_name": "image", "type": "choices", "value": {"choices": [label]}},
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candor", default=str(ROOT / ".venv" / "bin" / "candor"), help="the product's candor")
    parser.add_argument("--work", default=str(ROOT / "build" / "e2e-labelstudio"), help="a scratch folder")
    args = parser.parse_args()
    candor = Path(args.candor)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    files = work / "files"
    procs: list[subprocess.Popen] = []
    try:
        truth = write_images(candor.with_name("python"), files / "fmnist")
        step(f"{N_TASKS} Fashion-MNIST images written")

        # ---- Label Studio ----
        ls_port = free_port()
        ls_url = f"http://127.0.0.1:{ls_port}"
        ls_env = os.environ | {
            "LABEL_STUDIO_BASE_DATA_DIR": str(work / "ls-data"),
            "DJANGO_DB": "sqlite",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
            "LABEL_STUDIO_HOST": ls_url,
            # Candor, the project's ML backend (and its webhook), listens on loopback
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
        }
        ls_log = work / "label-studio.log"
        ls_cmd = [
            str(Path(sys.executable).with_name("label-studio")),
            "start",
            "--no-browser",
            "--host",
            "127.0.0.1",
            "--port",
            str(ls_port),
            "--username",
            "owner@example.com",
            "--password",
            PASSWORD,
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ]
        procs.append(subprocess.Popen(ls_cmd, env=ls_env, stdout=ls_log.open("wb"), stderr=subprocess.STDOUT))

        # ---- Candor (meanwhile) ----
        c_port = free_port()
        c_url = f"http://127.0.0.1:{c_port}"
        c_env = CANDOR_ENV | {
            "CANDOR_DATA_DIR": str(work / "candor-data"),
            "CANDOR_LABELSTUDIO_ALLOW_PRIVATE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        key = run([str(candor), "keys", "create", "--embedded", "--tenant", "e2e"], c_env)
        c_log = work / "candor.log"
        c_cmd = [str(candor), "serve", "--embedded", "--host", "127.0.0.1", "--port", str(c_port)]
        procs.append(subprocess.Popen(c_cmd, env=c_env, stdout=c_log.open("wb"), stderr=subprocess.STDOUT))
        wait_http(f"{c_url}/healthz", procs[1], c_log, 180)
        step(f"Candor serving at {c_url}")
        wait_http(f"{ls_url}/health", procs[0], ls_log, 900)
        step(f"Label Studio serving at {ls_url}")

        # ---- a project through the SDK ----
        ls = LabelStudio(base_url=ls_url, api_key=TOKEN)
        me = ls.users.whoami()
        others = [
            ls.users.create(email=f"annotator{k}@example.com", username=f"annotator{k}", password=PASSWORD).id
            for k in (2, 3)
        ]
        users = [me.id, *others]
        project = ls.projects.create(title="Candor e2e", label_config=label_config())
        # local files are served only under a project's local storage
        ls.import_storage.local.create(project=project.id, path=str(files / "fmnist"), title="fmnist")
        rng = random.Random(7)
        tasks = []
        for k in range(N_TASKS):
            right = CLASSES[truth[k]]
            wrong = CLASSES[(truth[k] + 1 + rng.randrange(len(CLASSES) - 1)) % len(CLASSES)]
            votes = [right, right, wrong] if k % 3 == 0 else [right, right, right]
            rng.shuffle(votes)
            anns = [choice(u, v) for u, v in zip(users, votes, strict=True)]
            if k % 5 == 0:
                anns.append(choice(users[0], CLASSES[(truth[k] + 5) % len(CLASSES)], cancelled=True))
            tasks.append({"data": {"image": f"/data/local-files/?d=fmnist/img{k}.png"}, "annotations": anns})
        ls.projects.import_tasks(id=project.id, request=tasks)
        exported = [t for t in ls.tasks.list(project=project.id, fields="all")]
        check(len(exported) == N_TASKS, f"Label Studio holds {len(exported)} tasks, not {N_TASKS}")
        step(f"project {project.id}: {N_TASKS} tasks, annotators {users}")

        # ---- into Candor, a job, the predictions back ----
        cli_env = CANDOR_ENV | {"CANDOR_SERVER": c_url, "CANDOR_API_KEY": key, "LABEL_STUDIO_API_KEY": TOKEN}
        common = ["--ls-url", ls_url, "--project", str(project.id)]
        dataset = run([str(candor), "remote", "labelstudio-import", *common], cli_env)
        step(f"imported into dataset {dataset}")
        api = httpx.Client(base_url=c_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        items = api.get(f"/v1/datasets/{dataset}/items", params={"limit": 1000}).json()["items"]
        check(len(items) == N_TASKS, f"{len(items)} items, not {N_TASKS}")
        by_task = {t.id: t for t in exported}
        for item in items:
            task = by_task[int(item["id"])]
            check(item["source"]["task"] == task.id, f"item {item['id']} has source {item['source']}")
            live = [a for a in task.annotations if not a["was_cancelled"]]
            check(len(item["annotations"]) == len(live) == 3, f"task {task.id}: {item['annotations']}")
        job = api.post("/v1/jobs", json={"dataset_id": dataset, "config": JOB_CONFIG}).json()
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
            job = api.get(f"/v1/jobs/{job['id']}").json()
        check(job["state"] == "succeeded", f"job {job['id']} {job['state']}: {job.get('error')}")
        version = api.get(f"/v1/classifiers/{job['classifier_id']}").json()["version"]
        step(f"job {job['id']} succeeded; classifier {job['classifier_id']} version {version}")
        run([str(candor), "remote", "labelstudio-push", job["id"], *common], cli_env)
        labels = {json.loads(x)["id"]: json.loads(x) for x in api.get(f"/v1/jobs/{job['id']}/labels").text.splitlines()}
        back = 0
        for task in ls.tasks.list(project=project.id, fields="all"):
            preds = task.predictions or []
            check(len(preds) == 1, f"task {task.id} has {len(preds)} predictions")
            pred = preds[0]
            pred = pred if isinstance(pred, dict) else pred.dict()
            row = labels[str(task.id)]
            got = pred["result"][0]["value"]["choices"]
            check(got == [row["label"]], f"task {task.id}: Label Studio shows {got}, Candor said {row['label']}")
            check(str(pred["model_version"]) == version, f"task {task.id}: model_version {pred['model_version']}")
            voted = {a["result"][0]["value"]["choices"][0] for a in task.annotations if not a["was_cancelled"]}
            check(row["label"] in voted, f"task {task.id}: {row['label']} is none of the annotators' {voted}")
            back += 1
        check(back == N_TASKS, f"{back} tasks read back")
        agree = sum(labels[str(t.id)]["label"] == CLASSES[truth[k]] for k, t in enumerate(exported))
        step(f"{back} predictions read back from Label Studio on their tasks; {agree}/{N_TASKS} match the true class")

        # ---- Candor as the project's ML backend ----
        backend = ls.ml.create(
            url=f"{c_url}/v1/labelstudio/{job['classifier_id']}",
            project=project.id,
            title="Candor",
            auth_method="BASIC_AUTH",
            basic_auth_user="labelstudio",
            basic_auth_pass=key,
            extra_params={"url": ls_url, "token": TOKEN, "train": True},
        )
        step(f"ML backend {backend.id} connected (state {getattr(backend, 'state', '?')})")
        fresh_task = {"data": {"image": f"/data/local-files/?d=fmnist/img{N_TASKS}.png"}}
        ls.projects.import_tasks(id=project.id, request=[fresh_task])
        target = next(t for t in ls.tasks.list(project=project.id, fields="all") if not t.annotations)
        answer = httpx.post(
            f"{ls_url}/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project.id},
            json={"selectedItems": {"all": False, "included": [target.id]}},
            headers={"Authorization": f"Token {TOKEN}"},
            timeout=300,
        )
        check(answer.status_code == 200, f"retrieve_tasks_predictions: HTTP {answer.status_code} {answer.text[:500]}")
        task = ls.tasks.get(id=target.id)
        preds = [p if isinstance(p, dict) else p.dict() for p in task.predictions or []]
        check(len(preds) == 1, f"task {target.id}: {len(preds)} predictions after asking the ML backend")
        check(str(preds[0]["model_version"]) == version, f"task {target.id}: model_version {preds[0]['model_version']}")
        got = preds[0]["result"][0]["value"]["choices"]
        png = (files / "fmnist" / f"img{N_TASKS}.png").read_bytes()
        direct = api.post(
            f"/v1/classifiers/{job['classifier_id']}/predict",
            files={"files": ("x.png", png, "image/png")},
            data={"candidates": CLASSES},
        ).json()["predictions"][0]
        check(got == [direct["label"]], f"task {target.id}: the ML backend said {got}, /predict {direct['label']}")
        step(f"Label Studio asked Candor (ML backend) for task {target.id}: {got[0]} (score {preds[0].get('score')})")

        # an annotation starts a new job: Label Studio's webhook to Candor, given the key as a header
        hooks = [h for h in ls.webhooks.list(project=str(project.id)) if h.url.endswith("/webhook")]
        check(len(hooks) == 1, f"Label Studio made {len(hooks)} webhooks for the ML backend")
        ls.webhooks.update(id=hooks[0].id, url=hooks[0].url, headers={"Authorization": f"Bearer {key}"})
        before = {j["id"] for j in api.get("/v1/jobs").json()["items"]}
        result = [{"from_name": "garment", "to_name": "image", "type": "choices", "value": {"choices": [got[0]]}}]
        ls.annotations.create(id=target.id, result=result)
        started = None
        for _ in range(120):
            started = [j for j in api.get("/v1/jobs").json()["items"] if j["id"] not in before]
            if started:
                break
            time.sleep(0.5)
        check(bool(started), "no job started after an annotation (ANNOTATION_CREATED webhook)")
        check(started[0]["dataset_id"] == dataset, f"the new job is on dataset {started[0]['dataset_id']}")
        api.post(f"/v1/jobs/{started[0]['id']}/cancel")
        step(f"an annotation on task {target.id} started job {started[0]['id']} through the webhook")
        # the annotated task was not in the dataset: it is now, with its image fetched from Label Studio
        held = {i["id"]: i for i in api.get(f"/v1/datasets/{dataset}/items", params={"limit": 1000}).json()["items"]}
        new = held.get(str(target.id))
        check(new is not None, f"task {target.id} did not enter the dataset through the webhook")
        check([a["label"] for a in new["annotations"]] == [got[0]], f"task {target.id}: {new['annotations']}")
        check(new["image_sha256"] == hashlib.sha256(png).hexdigest(), f"task {target.id}: another image")
        step(f"the annotation entered the dataset as item {target.id} ({got[0]}), its image fetched from Label Studio")
        step(f"PASSED in {time.monotonic() - STARTED:.0f} s")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
