"""Released pre-trained weights: a small folder that ships in a repository and fine-tunes anywhere.

``anatosynth release RUN --out weights/NAME`` turns a finished pre-training run into

- ``model.safetensors``: the network's state_dict in half precision (safetensors: no pickle, loads without
  executing code); fine-tuning casts it back to float32;
- ``metadata.json``: the network and class names (what ``--init`` needs to check and rebuild), as in the run;
- ``card.json`` and ``README.md``: the model card — architecture, classes, bank hash, synthesis config,
  steps, final loss, package versions, the commit and the command that made it, and the weights' sha256.

``anatosynth finetune --init weights/NAME`` reads such a folder. The card holds no local paths: the bank is
named by its sha256 only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from anatosynth.errors import InputError
from anatosynth.io.volume import atomic_write_text
from anatosynth.train.checkpoint import load_weights_only, read_checkpoint, save_nnunet_weights
from anatosynth.train.run_folder import code_commit

__all__ = ["release", "load_release", "read_card", "WEIGHTS_FILE", "CARD_FILE"]

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"


def _final_loss(run: Path) -> dict:
    """Last logged loss and the mean over the last tenth of the logged steps, from the run's checkpoint."""
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        return {}
    history = read_checkpoint(ckpt).get("history")
    if not isinstance(history, torch.Tensor) or history.ndim != 2 or not len(history):
        return {}
    tail = history[-max(1, len(history) // 10):, 1]
    return {"final_loss": round(float(history[-1, 1]), 4), "final_loss_mean_last_10pct": round(float(tail.mean()), 4),
            "loss_curve": [[int(s), round(float(v), 4)] for s, v in history[:, :2].tolist()]}


def release(run: str | Path, out: str | Path, command: str | None = None, name: str | None = None,
            job_key: str | None = None, nnunet: bool = False) -> Path:
    """Write the released form of pre-training run ``run`` (its ``model.pt`` and ``metadata.json``) to ``out``.

    With ``nnunet``, also ``out/nnunet_pretrained.pth`` (float32 ``network_weights``) for
    ``nnUNetv2_train -pretrained_weights``, and the plans facts on the card (a run of ``--nnunet-plans`` only).

    Raises:
        InputError: ``run`` is not a finished pre-training run (or, with ``nnunet``, not one for nnU-Net), or
            ``out`` exists and is not a release.
    """
    from safetensors.torch import save_file

    from anatosynth.io.volume import check_output_dir

    run, out = Path(run), Path(out)
    check_output_dir(out)
    meta_path, model_path = run / "metadata.json", run / "model.pt"
    if not model_path.is_file() or not meta_path.is_file():
        raise InputError(run, "not a finished pre-training run (model.pt and metadata.json needed)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if out.exists() and not (out / CARD_FILE).is_file():
        raise InputError(out, "exists and is not a released-weights folder; choose another --out")
    state = load_weights_only(model_path, "model")
    plan = (meta.get("model") or {}).get("nnunet")
    if nnunet and not plan:
        raise InputError(run, "not pre-trained for nnU-Net (pretrain --nnunet-plans PLANS); --format nnunet needs "
                              "the network nnU-Net builds")
    half = {k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in state.items()}
    config: dict = {}
    if (run / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    card = {
        "name": name or out.name,
        "architecture": meta.get("model"),
        "class_names": meta.get("class_names"),
        "mode": meta.get("mode"), "render": meta.get("render"), "synth": meta.get("synth"),
        "bank_sha256": meta.get("bank_sha256"),
        "steps": meta.get("steps_done"), "batch": config.get("batch"), "samples_seen": meta.get("samples_seen"),
        "lr": config.get("lr"), "warmup": config.get("warmup"), "seed": meta.get("seed"),
        **_final_loss(run),
        "versions": meta.get("versions"),
        # the code that trained it: one entry per session of the run (start step, commit), when the run
        # recorded them; else only the commit releasing it is known
        "sessions": meta.get("sessions"),
        "commit": (meta.get("sessions") or [{}])[-1].get("commit") or code_commit(),
        "command": command,
        "job_key": job_key,  # the experiment job that made it, when an experiment released it
        "dtype": "float16",
        "weights_file": WEIGHTS_FILE,
        "spacing_mm": meta.get("spacing_mm"),
    }
    if plan:
        card["nnunet"] = nnunet_card(plan, card, meta)
    card_meta = {k: v for k, v in meta.items() if k in ("model", "class_names", "mode", "render", "bank_sha256",
                                                        "versions")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        # one metadata entry: safetensors writes a metadata map in no fixed order, so two entries made the
        # file's bytes (and its sha256 on the card) differ between two releases of the same run
        save_file(half, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        card["weights_sha256"] = hashlib.sha256((tmp / WEIGHTS_FILE).read_bytes()).hexdigest()
        card["weights_bytes"] = (tmp / WEIGHTS_FILE).stat().st_size
        if nnunet:
            from anatosynth.train.nnunet import NNUNET_WEIGHTS

            save_nnunet_weights(tmp / NNUNET_WEIGHTS, state, {k: v for k, v in card.items() if k != "loss_curve"})
            card["nnunet"]["weights_file"] = NNUNET_WEIGHTS
            card["nnunet"]["weights_sha256"] = hashlib.sha256((tmp / NNUNET_WEIGHTS).read_bytes()).hexdigest()
        atomic_write_text(tmp / "metadata.json", json.dumps(card_meta, indent=1) + "\n")
        atomic_write_text(tmp / CARD_FILE, json.dumps(card, indent=1) + "\n")
        atomic_write_text(tmp / "README.md", _card_markdown(card, out))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def nnunet_card(plan: dict, card: dict, meta: dict) -> dict:
    """What an nnU-Net user must know: the plans the weights fit, and how the synthetic images were scaled."""
    scheme = (plan.get("normalization") or ["?"])[0]
    how = {"ZScoreNormalization": "z-scored per patch (nnU-Net z-scores each image)",
           "CTNormalization": "foreground standardised per patch to mean 0, std 1, clipped at the plans' 0.5/99.5 "
                              "foreground percentiles in those units (what CTNormalization gives a CT's foreground)",
           "RescaleTo01Normalization": "rescaled per patch to [0, 1]",
           "NoNormalization": "left as rendered (intensities in [0, 1]), as nnU-Net leaves the target's"}
    return {
        "plans_name": plan.get("plans_name"), "configuration": plan.get("configuration"),
        "dataset_name": plan.get("dataset_name"), "plans_sha256": plan.get("sha256"),
        "network_class": plan.get("network_class"), "patch_size": plan.get("patch_size"),
        "spacing_mm": plan.get("spacing"), "normalization": scheme,
        "synthetic_images": f"rendered `{card.get('render')}` in [0, 1], then {how.get(scheme, scheme)}",
        "synthetic_spacing_mm_xyz": meta.get("spacing_mm"),
        "loaded_by": "nnUNetv2_train DATASET CONFIGURATION FOLD -p PLANS -pretrained_weights nnunet_pretrained.pth "
                     "(every key but .seg_layers., which nnU-Net re-initialises)",
    }


def read_card(folder: str | Path) -> dict | None:
    """The model card (``card.json``) of a released-weights folder; None when the folder has none yet.

    Raises:
        InputError: the card is there but is not one ``anatosynth release`` wrote (no ``weights_sha256``).
    """
    card = Path(folder) / CARD_FILE
    if not card.is_file():
        return None
    try:
        info = json.loads(card.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not isinstance(info.get("weights_sha256"), str):
            raise ValueError
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        raise InputError(card, "not a model card written by 'anatosynth release' (no weights_sha256)") from None
    return info


def load_release(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The float32 state_dict and ``metadata.json`` of a released-weights folder (or its .safetensors file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder if folder.suffix == ".safetensors" else folder / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(path, "released weights not found")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path, f"cannot read released weights ({str(err).splitlines()[0][:160]})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    meta_path = path.parent / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return state, meta


def _made_with(card: dict) -> str:
    """The commits that trained the weights, with the steps each ran (one per session of the run)."""
    sessions = card.get("sessions") or []
    if not sessions:
        return f"commit `{card.get('commit')}` (the commit that released it; the run recorded none)"
    ends = [s.get("from_step") for s in sessions[1:]] + [card.get("steps")]
    return ", ".join(f"commit `{s.get('commit')}` (steps {s.get('from_step')}–{end})" for s, end in zip(sessions, ends))


def _card_markdown(card: dict, out: Path) -> str:
    arch = card.get("architecture") or {}
    if card.get("nnunet"):
        return _nnunet_card_markdown(card, out)
    patch = "×".join(str(p) for p in arch.get("patch", []))
    classes = [c for c in (card.get("class_names") or []) if c != "background"]
    versions = ", ".join(f"{k} {v}" for k, v in (card.get("versions") or {}).items())
    lines = [
        f"# {card['name']}: anatosynth pre-trained weights",
        "",
        f"- **Network:** MONAI {arch.get('name')} (feature size {arch.get('feature_size')}, "
        f"{arch.get('in_channels')} input channel, {arch.get('out_channels')} output classes), patch {patch}.",
        f"- **Pre-training task:** synthetic segmentation, mode `{card.get('mode')}`, render `{card.get('render')}`; "
        f"{len(classes)} foreground classes: {', '.join(classes)}.",
        f"- **Budget:** {card.get('steps')} steps of batch {card.get('batch')} ({card.get('samples_seen')} synthetic "
        f"patches), lr {card.get('lr')}, seed {card.get('seed')}.",
        f"- **Final loss (DiceCE):** {card.get('final_loss')} (mean over the last tenth of the logged steps: "
        f"{card.get('final_loss_mean_last_10pct')}).",
        ("- **Shape bank:** none (primitives are drawn from formulas, not from organ shapes)."
         if card.get("bank_sha256") is None else f"- **Shape bank:** sha256 `{card.get('bank_sha256')}`."),
        f"- **Weights:** `{card['weights_file']}`, float16, {card.get('weights_bytes')} bytes, "
        f"sha256 `{card.get('weights_sha256')}`.",
        f"- **Made with:** {_made_with(card)}; {versions}.",
        f"- **Command:** `{card.get('command')}`",
        "",
        f"Fine-tune from it: `anatosynth finetune --data DATA --init {out.as_posix()}" +
        f" --model {arch.get('name')} --feature-size {arch.get('feature_size')}"
        f" --patch {','.join(str(p) for p in arch.get('patch', []))} --out RUN`",
        "(the output head is re-initialised when the classes differ). These are the options the weights need; to",
        "fine-tune as the protocol in **Command** did, add its `finetune:` settings (spacing, lr, steps, crops,",
        "`freeze_pretrained_steps`): anatosynth's README, \"Pre-trained weights and kept results\", gives the",
        "cpu-long grid's whole command. Synthesis settings: `card.json`.",
        "",
    ]
    return "\n".join(lines)


def _nnunet_card_markdown(card: dict, out: Path) -> str:
    nn = card["nnunet"]
    classes = [c for c in (card.get("class_names") or []) if c != "background"]
    weights = nn.get("weights_file")
    lines = [
        f"# {card['name']}: anatosynth pre-trained weights for nnU-Net v2",
        "",
        f"- **Network:** `{nn.get('network_class')}` of plans `{nn.get('plans_name')}`, configuration "
        f"`{nn.get('configuration')}` (dataset `{nn.get('dataset_name')}`, plans sha256 `{nn.get('plans_sha256')}`), "
        f"patch {nn.get('patch_size')} at {nn.get('spacing_mm')} mm in nnU-Net's axis order.",
        f"- **Intensities:** the plans normalise with `{nn.get('normalization')}`; the synthetic images were "
        f"{nn.get('synthetic_images')}. Synthetic voxels: {nn.get('synthetic_spacing_mm_xyz')} mm (x, y, z).",
        f"- **Pre-training task:** synthetic segmentation, mode `{card.get('mode')}`, render `{card.get('render')}`; "
        f"{len(classes)} foreground classes; deep supervision on every output nnU-Net trains (weights 1/2^i, the "
        "lowest 0).",
        f"- **Budget:** {card.get('steps')} steps of batch {card.get('batch')} ({card.get('samples_seen')} synthetic "
        f"patches), lr {card.get('lr')}, seed {card.get('seed')}; final loss {card.get('final_loss')}.",
        ("- **Shape bank:** none (primitives)." if card.get("bank_sha256") is None
         else f"- **Shape bank:** sha256 `{card.get('bank_sha256')}`."),
        (f"- **Weights:** `{weights}` (float32, for nnU-Net; sha256 `{nn.get('weights_sha256')}`) and "
         f"`{card['weights_file']}` (float16). Made with {_made_with(card)}." if weights else
         f"- **Weights:** `{card['weights_file']}` (float16) only; for nnU-Net release the run again with "
         f"`--format nnunet`. Made with {_made_with(card)}."),
        f"- **Command:** `{card.get('command')}`",
        "",
    ]
    if weights:
        lines += ["Fine-tune with nnU-Net (the same plans; nnU-Net re-initialises the output layers for your classes):",
                  "",
                  f"    nnUNetv2_train {nn.get('dataset_name') or 'DATASET'} {nn.get('configuration')} 0 -p "
                  f"{nn.get('plans_name')} -pretrained_weights {(out / str(weights)).as_posix()}",
                  ""]
    return "\n".join(lines)
