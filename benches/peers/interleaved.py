"""qforge against PyTorch and ONNX Runtime, call by call.

The host's speed moves within seconds, so timing one engine for a while and then the other
compares two machine states as much as two engines. This harness keeps every engine loaded
at once and takes turns: in each round every contestant runs a few calls, qforge through
`qforge bench --interleave`, the peers in this process. A round's ratio compares calls made
within a fraction of a second of each other; the report gives the median ratio over rounds,
its range, and how many rounds meet a target.

With `--cpus 0` (a comma-separated list) this process and the qforge processes it starts run
on the same CPUs only: otherwise the scheduler may keep each engine on its own CPU, and the
CPUs of a VM need not be equally fast at a given moment.

    python benches/peers/interleaved.py --qforge target/release/qforge \\
        --models resnet18,mobilenet_v2,unet,minilm --rounds 15 [--threads 1] [--cpus 0] [--json out.jsonl]

Needs torch and torchvision (CNNs), transformers (MiniLM) and onnxruntime (optional, MiniLM);
MiniLM reads the model folder from MINILM_DIR (as fetched by `cargo xtask fetch-models`).
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")


class Qforge:
    """A `qforge bench --interleave` process holding one prepared model."""

    def __init__(self, exe, model, mode, threads, env):
        cmd = [exe, "bench", "--model", model, "--mode", mode, "--threads", str(threads), "--interleave"]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = json.loads(self.p.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise RuntimeError(f"{' '.join(cmd)} did not start")
        self.source = ready.get("source")

    def times(self, n):
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("qforge exited")
        return [t / 1e3 for t in json.loads(line)["times_ms"]]

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def timed(f, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def unet(c=32):
    """The UNet of the anchors' cnn_torch.py (conv-bn-relu blocks, max pool down, transposed conv up)."""
    import torch
    import torch.ao.quantization as tq

    class UNet(torch.nn.Module):
        def __init__(s):
            super().__init__()

            def blk(i, o):
                return torch.nn.Sequential(
                    torch.nn.Conv2d(i, o, 3, padding=1, bias=False), torch.nn.BatchNorm2d(o), torch.nn.ReLU(),
                    torch.nn.Conv2d(o, o, 3, padding=1, bias=False), torch.nn.BatchNorm2d(o), torch.nn.ReLU())

            s.quant = tq.QuantStub()
            s.dequant = tq.DeQuantStub()
            s.e1, s.e2, s.e3 = blk(3, c), blk(c, 2 * c), blk(2 * c, 4 * c)
            s.pool = torch.nn.MaxPool2d(2)
            s.u2 = torch.nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
            s.d2 = blk(4 * c, 2 * c)
            s.u1 = torch.nn.ConvTranspose2d(2 * c, c, 2, stride=2)
            s.d1 = blk(2 * c, c)
            s.out = torch.nn.Conv2d(c, 5, 1)
            s.cat = torch.ao.nn.quantized.FloatFunctional()

        def forward(s, x):
            x = s.quant(x)
            a = s.e1(x)
            b = s.e2(s.pool(a))
            c_ = s.e3(s.pool(b))
            d = s.d2(s.cat.cat([s.u2(c_), b], 1))
            e = s.d1(s.cat.cat([s.u1(d), a], 1))
            return s.dequant(s.out(e))

        def fuse_model(s):
            for m in [s.e1, s.e2, s.e3, s.d2, s.d1]:
                tq.fuse_modules(m, [["0", "1", "2"], ["3", "4", "5"]], inplace=True)

    return UNet()


def cnn_peers(name, engines):
    """PyTorch static int8 models as the anchors build them: fused, default qconfig of each
    engine, calibrated on 4 random batches."""
    import torch
    import torch.ao.quantization as tq
    import torchvision.models.quantization as qm

    torch.manual_seed(0)
    make, shape = {
        "mobilenet_v2": (lambda: qm.mobilenet_v2(weights=None, quantize=False), (1, 3, 224, 224)),
        "resnet18": (lambda: qm.resnet18(weights=None, quantize=False), (1, 3, 224, 224)),
        "unet": (unet, (1, 3, 256, 256)),
    }[name]
    m = make().eval()
    x = torch.randn(*shape)
    peers = {}
    for eng in engines:
        torch.backends.quantized.engine = eng
        q = copy.deepcopy(m)
        q.fuse_model()
        q.qconfig = tq.get_default_qconfig(eng)
        for mm in q.modules():
            if isinstance(mm, torch.nn.ConvTranspose2d):
                mm.qconfig = tq.QConfig(activation=q.qconfig.activation, weight=tq.default_weight_observer)
        tq.prepare(q, inplace=True)
        with torch.no_grad():
            for _ in range(4):
                q(torch.randn(*shape))
        tq.convert(q, inplace=True)

        def run(q=q, eng=eng):
            torch.backends.quantized.engine = eng
            with torch.no_grad():
                q(x)

        peers[f"torch-{eng}"] = run
    return peers


def minilm_peers(md, threads, engines):
    """PyTorch fp32 and dynamic int8 (per engine) and, when onnxruntime is there, its dynamic
    int8 models (per tensor and per channel), on the anchors' padded sentence."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(md)
    model = AutoModel.from_pretrained(md).eval()
    t = tok(["The quick brown fox jumps over the lazy dog. " * 6], padding="max_length", truncation=True,
            max_length=128, return_tensors="pt")
    fp32, int8 = {}, {}

    def run_fp32():
        with torch.no_grad():
            model(**t)

    fp32["torch-fp32"] = run_fp32
    for eng in engines:
        torch.backends.quantized.engine = eng
        q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

        def run(q=q, eng=eng):
            torch.backends.quantized.engine = eng
            with torch.no_grad():
                q(**t)

        int8[f"torch-{eng}"] = run
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return fp32, int8
    out = os.environ.get("ONNX_OUT", "target/peers-onnx")
    os.makedirs(out, exist_ok=True)
    fp, qp, qpc = (f"{out}/minilm.onnx", f"{out}/minilm.int8.onnx", f"{out}/minilm.int8pc.onnx")
    if not os.path.exists(qpc):
        class Wrap(torch.nn.Module):
            def __init__(s, m):
                super().__init__()
                s.m = m

            def forward(s, a, b, c):
                return s.m(input_ids=a, attention_mask=b, token_type_ids=c).last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        torch.onnx.export(Wrap(model), tuple(t[k] for k in names), fp, input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes={k: {0: "b", 1: "s"} for k in names},
                          opset_version=17, dynamo=False)
        quantize_dynamic(fp, qp, weight_type=QuantType.QInt8)
        quantize_dynamic(fp, qpc, weight_type=QuantType.QInt8, per_channel=True)
    feed = {k: t[k].numpy() for k in ["input_ids", "attention_mask", "token_type_ids"]}
    for label, path in (("ort-int8", qp), ("ort-int8-perchannel", qpc)):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        int8[label] = lambda s=s: s.run(None, feed)
    return fp32, int8


def duel(label, ours, peers, rounds, reps, target, out):
    """Rounds of `reps` calls each, ours first then every peer; prints and returns the summary."""
    for f in [ours] + list(peers.values()):
        f(3)
    per_round = {k: [] for k in ["qforge"] + list(peers)}
    ratios = []
    for _ in range(rounds):
        row = {"qforge": statistics.median(ours(reps))}
        for k, f in peers.items():
            row[k] = statistics.median(f(reps))
        for k, v in row.items():
            per_round[k].append(v)
        ratios.append(row["qforge"] / min(v for k, v in row.items() if k != "qforge"))
    med = {k: statistics.median(v) * 1e3 for k, v in per_round.items()}
    best_peer = min((k for k in peers), key=lambda k: med[k])
    met = sum(r <= target for r in ratios)
    summary = {
        "suite": "peers", "case": label, "rounds": rounds, "reps": reps, "median_ms": med,
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "target": target, "rounds_meeting_target": met,
        "per_round_ms": {k: [round(t * 1e3, 3) for t in v] for k, v in per_round.items()},
    }
    print(f"{label:22s} qforge {med['qforge']:7.2f} ms | best peer {best_peer} {med[best_peer]:7.2f} ms | "
          f"ratio median {summary['ratio_median']:.2f} (range {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f}), "
          f"<= {target} in {met}/{rounds} rounds | " + ", ".join(f"{k} {v:.2f}" for k, v in med.items() if k != "qforge"),
          flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(summary) + "\n")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qforge", default="target/release/qforge")
    ap.add_argument("--models", default="resnet18,mobilenet_v2,unet,minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3, help="calls per contestant per round (median taken)")
    ap.add_argument("--engines", default="x86,onednn", help="PyTorch quantized engines to include")
    ap.add_argument("--json", help="append one JSON line per comparison to this file")
    ap.add_argument("--cpus", help="run every engine on these CPUs only (comma-separated ids)")
    a = ap.parse_args()
    if a.cpus:
        cpus = {int(c) for c in a.cpus.split(",")}
        if len(cpus) < a.threads:
            sys.exit(f"--cpus {a.cpus} has fewer CPUs than --threads {a.threads}")
        # Inherited by the qforge processes started below.
        os.sched_setaffinity(0, cpus)
    import torch

    torch.set_num_threads(a.threads)
    engines = a.engines.split(",")
    env = dict(os.environ)
    for name in a.models.split(","):
        if name == "minilm":
            md = os.environ.get("MINILM_DIR")
            if not md:
                sys.exit("MiniLM needs MINILM_DIR (the folder with model.safetensors, config.json, tokenizer.json)")
            env["QFORGE_MODELS"] = os.path.dirname(os.path.abspath(md))
            fp32, int8 = minilm_peers(md, a.threads, engines)
            for mode, peers, target in (("dynamic", int8, 0.7), ("fp32", fp32, 1.2)):
                q = Qforge(a.qforge, "minilm", mode, a.threads, env)
                if q.source and "random" in q.source:
                    sys.exit(f"qforge did not find MiniLM under {env['QFORGE_MODELS']}")
                wrapped = {k: (lambda n, f=f: timed(f, n)) for k, f in peers.items()}
                duel(f"minilm {mode}", q.times, wrapped, a.rounds, a.reps, target, a.json)
                q.close()
        else:
            peers = cnn_peers(name, engines)
            q = Qforge(a.qforge, name, "static", a.threads, env)
            wrapped = {k: (lambda n, f=f: timed(f, n)) for k, f in peers.items()}
            duel(f"{name} static", q.times, wrapped, a.rounds, a.reps, 0.8, a.json)
            q.close()


if __name__ == "__main__":
    main()
