"""Train the embedded default (teacher, distilled students, probe) on the built-in shapes data.

This is how the weights under ``edgegen/embedded/weights/`` were made; rerun it to reproduce them
(about 45 minutes on 2 CPU cores). Stages, each in its own folder under ``--work``:

1. autoencoder: the VAE learns to encode 32x32 shapes into 8x8x4 latents (a plain loop here:
   no trainer recipe covers VAE pre-training, the product never needs one);
2. teacher: ``edgegen train finetune`` (full fine-tuning of the UNet and text encoder from their
   seeded random initialisation) until its samples follow the captions;
3. student: ``edgegen student init --preset small`` then ``edgegen train distill`` (KD-MMG);
4. few-step student: ``edgegen train adversarial`` (HDG-MMS) from the distilled student;
5. decoder: ``edgegen student init --component vae_decoder`` on the few-step student, then
   ``edgegen train decoder``: a tiny decoder in place of its VAE;
6. probe: the caption-faithfulness classifier.

    .venv/bin/python scripts/train_embedded_default.py --work out/train-default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_autoencoder(pipeline_dir: Path, steps: int, batch_size: int, seed: int = 0) -> dict:
    """Fit the teacher's VAE to the shapes data; the text encoder and UNet are left as they are."""
    import torch
    from diffusers import AutoencoderKL

    from edgegen.data.shapes import ShapesDataset

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae")
    vae.train()
    data = ShapesDataset(count=steps * batch_size, seed=seed + 1)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    started, losses = time.perf_counter(), []
    for step, batch in enumerate(loader, 1):
        images = batch["pixel_values"]
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        # A light KL keeps the latent scale near unit variance, as diffusion expects.
        loss = torch.nn.functional.mse_loss(reconstruction, images) + 1e-5 * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"autoencoder step {step}/{steps}: loss {sum(losses[-100:]) / 100:.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        held_out = torch.stack([ShapesDataset(count=256, seed=seed + 99)[i]["pixel_values"] for i in range(256)])
        latents = vae.encode(held_out).latent_dist.mean
        scaling = float(1.0 / latents.std())
        error = torch.nn.functional.mse_loss(vae.decode(latents).sample, held_out).item()
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(pipeline_dir / "vae", safe_serialization=True)
    return {"steps": steps, "batch_size": batch_size, "final_loss": sum(losses[-50:]) / 50,
            "held_out_mse": error, "scaling_factor": scaling, "seconds": time.perf_counter() - started}


def edgegen(*args: str) -> None:
    print("$ edgegen " + " ".join(args), flush=True)
    subprocess.run([str(Path(sys.executable).parent / "edgegen"), *args], check=True, cwd=ROOT)


def package(work: Path, log: dict) -> None:
    """Copy the trained weights into edgegen/embedded/weights/ (what the package ships)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from edgegen.models.checkpoint import read_student_manifest
    from edgegen.embedded import builders as tiny

    tiny.WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    teacher = work / log.get("teacher_run", "teacher-run") / "pipeline"
    state = {}
    for prefix, sub, name in (("unet.", "unet", "diffusion_pytorch_model"), ("text_encoder.", "text_encoder", "model"), ("vae.", "vae", "diffusion_pytorch_model")):
        for key, value in load_file(str(teacher / sub / f"{name}.safetensors")).items():
            state[prefix + key] = value
    save_file(state, str(tiny.TEACHER_WEIGHTS))
    vae_config = json.loads((teacher / "vae" / "config.json").read_text())
    tiny.TEACHER_PROVENANCE.write_text(json.dumps({"vae_scaling_factor": vae_config["scaling_factor"], "training": log, "history": log.get("history", [])}, indent=2) + "\n")
    students = {}
    for kind, folder in (("distilled", work / "distill" / "pipeline"), ("few-step", work / "adversarial" / "pipeline")):
        manifest = read_student_manifest(folder)
        weights = dict(load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")))
        scman = folder / "unet" / "scman.safetensors"
        if scman.exists():
            weights.update(load_file(str(scman)))
        save_file(weights, str(tiny.STUDENT_WEIGHTS[kind]))
        students[kind] = manifest.model_dump(mode="json", include={"preset", "recipe", "sampling", "qat"})
    tiny.STUDENT_PROVENANCE.write_text(json.dumps(students, indent=2) + "\n")
    package_decoder(work)
    shutil.rmtree(tiny.PROBE_DIR, ignore_errors=True)
    shutil.copytree(work / "probe", tiny.PROBE_DIR)


def package_decoder(work: Path) -> None:
    from safetensors.torch import load_file, save_file

    from edgegen.embedded import builders as tiny
    from edgegen.models.decoder_student import read_decoder_manifest

    folder = work / "decoder" / "pipeline"
    save_file(load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")), str(tiny.DECODER_WEIGHTS))
    manifest = read_decoder_manifest(folder)
    tiny.DECODER_PROVENANCE.write_text(json.dumps(manifest.model_dump(mode="json", include={"preset", "recipe"}), indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "train-default")
    parser.add_argument("--autoencoder-steps", type=int, default=1500)
    parser.add_argument("--teacher-steps", type=int, default=5000)
    parser.add_argument("--distill-steps", type=int, default=1500)
    parser.add_argument("--adversarial-steps", type=int, default=600)
    parser.add_argument("--decoder-steps", type=int, default=3000)
    parser.add_argument("--teacher-base", type=Path, help="start the teacher from this folder (default: WORK/base)")
    parser.add_argument("--teacher-run", default="teacher-run", help="the teacher run's folder under WORK")
    parser.add_argument("--teacher-learning-rate", default="1e-3")
    parser.add_argument("--stages", default="autoencoder,teacher,student,fewstep,decoder,probe,evaluate,package")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    stages = args.stages.split(",")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}

    def save_log() -> None:
        log_path.write_text(json.dumps(log, indent=2))

    work = work.relative_to(ROOT) if work.is_absolute() and work.is_relative_to(ROOT) else work
    base = args.teacher_base or work / "base"
    teacher = work / args.teacher_run / "pipeline"
    if "autoencoder" in stages:
        from edgegen.embedded.builders import build_embedded_default

        build_embedded_default(base, weights="random")
        log["autoencoder"] = train_autoencoder(base, args.autoencoder_steps, batch_size=32)
        save_log()
    log["teacher_run"] = args.teacher_run
    if "teacher" in stages:
        resume = ["--resume"] if (work / args.teacher_run / "checkpoints").exists() else []
        edgegen("train", "finetune", f"teacher={base}", f"output={work / args.teacher_run}", f"steps={args.teacher_steps}", "batch_size=64",
                f"learning_rate={args.teacher_learning_rate}", "warmup_steps=100", "train_text_encoder=true", "checkpoint_every=250", "log_every=50",
                "data=builtin:shapes?count=100000", *resume)
    if "student" in stages:
        edgegen("student", "init", "--teacher", str(teacher), "--preset", "small", "-o", str(work / "student-init"), "--force")
        edgegen("train", "distill", f"teacher={teacher}", f"student={work / 'student-init'}", f"output={work / 'distill'}",
                f"steps={args.distill_steps}", "batch_size=64", "learning_rate=1e-3", "warmup_steps=50", "checkpoint_every=250",
                "log_every=50", "data=builtin:shapes?count=100000&seed=1")
    if "fewstep" in stages:
        edgegen("train", "adversarial", f"teacher={teacher}", f"student={work / 'distill' / 'pipeline'}", f"output={work / 'adversarial'}",
                f"steps={args.adversarial_steps}", "batch_size=32", "learning_rate=1e-4", "sampling_steps=2", "checkpoint_every=200",
                "log_every=25", "data=builtin:shapes?count=100000&seed=2")
    if "decoder" in stages:
        fewstep = work / "adversarial" / "pipeline"
        edgegen("student", "init", "--component", "vae_decoder", "--teacher", str(fewstep), "--preset", "small", "-o", str(work / "decoder-init"), "--force")
        edgegen("train", "decoder", f"teacher={teacher}", f"student={work / 'decoder-init'}", f"output={work / 'decoder'}",
                f"steps={args.decoder_steps}", "batch_size=32", "learning_rate=2e-3", "checkpoint_every=500", "log_every=100",
                "data=builtin:shapes?count=100000&seed=3")
    if "package-decoder" in stages:
        package_decoder(work)
    if "probe" in stages:
        from edgegen.embedded.probe import save_probe, train_probe

        probe = train_probe(steps=600)
        save_probe(probe, work / "probe")
        log["probe"] = probe.manifest.held_out_accuracy
        save_log()
    if "evaluate" in stages:
        probe_dir = work / "probe"
        from edgegen.embedded.evaluation import evaluate_grid, generate_grid

        teacher_images = generate_grid(teacher, 20, 1.0).images
        student, fewstep = work / "distill" / "pipeline", work / "adversarial" / "pipeline"
        cases = {
            "teacher, 20 steps": (teacher, 20, 1.0),
            "teacher, 20 steps, guidance 3": (teacher, 20, 3.0),
            "teacher, 2 steps": (teacher, 2, 1.0),
            "student, 20 steps": (student, 20, 1.0),
            "student, 2 steps (before HDG-MMS)": (student, 2, 1.0),
            "few-step student, 2 steps": (fewstep, 2, 1.0),
            "few-step student with its tiny decoder, 2 steps": (work / "decoder" / "pipeline", 2, 1.0),
        }
        log["faithfulness"] = {
            # The first case is the reference itself, so it gets no PSNR.
            name: evaluate_grid(folder, probe_dir, steps, guidance, teacher_images if index else None)
            for index, (name, (folder, steps, guidance)) in enumerate(cases.items())
        }
        save_log()
        print(json.dumps(log["faithfulness"], indent=2), flush=True)
    if "package" in stages:
        package(work, log)


if __name__ == "__main__":
    main()
