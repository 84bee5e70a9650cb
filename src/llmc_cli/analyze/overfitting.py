"""Overfitting: the eval loss against the train loss, the step where the eval loss turned, and
the best checkpoint against the final adapter (finding: overfitting)."""

from __future__ import annotations

from llmc_cli.analyze.curves import MIN_EVALS, train_curve
from llmc_cli.analyze.findings import Finding, Section, clamp


def analyze_overfitting(records) -> Section:
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in records.evals if e["step"] > 0]
    if len(evals) < MIN_EVALS:
        why = "no evaluations" if not evals else f"only {len(evals)} evaluation(s)"
        return Section(
            "overfitting",
            f"{why}: cannot judge overfitting (keep a validation set; --eval-every sets how often)",
            judged=False,
        )
    best_step, best = min(evals, key=lambda e: (e[1], e[0]))
    last_step, last = evals[-1]
    rise = last / best - 1
    section = Section("overfitting", "", [], {"best_eval_step": best_step, "best_eval_loss": best,
                                              "final_eval_loss": last, "rise": round(rise, 4)})  # fmt: skip
    section.evidence.append(f"eval loss lowest {best:.4f} at step {best_step}; {last:.4f} at step {last_step} "
                            f"({rise:+.1%})")  # fmt: skip
    c = train_curve(records)
    if c is not None:
        at = dict(zip(c.xs, c.smooth, strict=True))
        gaps = [(step, loss - at[step]) for step, loss in evals if step in at]
        if len(gaps) >= 2:
            section.figures["gap"] = {"first": round(gaps[0][1], 4), "last": round(gaps[-1][1], 4)}
            section.evidence.append(
                f"eval - train gap {gaps[0][1]:+.4f} at step {gaps[0][0]} -> {gaps[-1][1]:+.4f} at step {gaps[-1][0]}"
            )
        train_fell = (
            at.get(best_step) is not None and c.final < at[best_step] and c.significant(at[best_step] - c.final)
        )
    else:
        train_fell = True
    restored = (records.summary or {}).get("restored_best_step")
    if restored is not None:
        section.evidence.append(f"the final adapter is the best one, restored from step {restored}")
    # Evaluations use the same held-out set each time, so a rise over the later ones is real, not noise:
    # it counts when it is large, or when it gave back a good part of what training had gained.
    base = next((float(e["eval_loss"]) for e in records.evals if e["step"] == 0), None)
    gained = (base - best) if base is not None and base > best else None
    after = [loss for step, loss in evals if step > best_step]
    rising = len(after) >= 2 and after[-1] >= after[0]
    gave_back = gained is not None and (last - best) >= 0.25 * gained and rise > 0.003
    if (rise > 0.02 or (gave_back and rising)) and best_step < last_step and train_fell:
        total = records.total_steps or last_step
        epochs = float(records.config.get("epochs") or 1)
        if records.config.get("max_steps"):
            fix = f"--max-steps {best_step}"
        else:
            fix = f"--epochs {max(0.1, round(epochs * best_step / total, 1)):g}"
        fix += f" (or enable_early_stopping = true in llmc.toml); meanwhile: llmc checkpoints best {records.run_dir}"
        section.verdict = f"overfitting from step {best_step}: the eval loss rose {rise:.1%} while the train loss fell"
        section.findings.append(Finding(
            "overfitting", f"the eval loss turned upwards at step {best_step}",
            f"eval {best:.4f} at step {best_step} -> {last:.4f} at step {last_step} while the train loss kept falling",
            fix, clamp(0.3 + rise / 0.08 + (0.3 * min(1.0, (last - best) / gained) if gained else 0.0))))  # fmt: skip
    elif best_step == last_step:
        section.verdict = "no overfitting: the last evaluation was the best"
    else:
        section.verdict = f"no overfitting: the eval loss ended within {rise:.1%} of its best"
    return section
