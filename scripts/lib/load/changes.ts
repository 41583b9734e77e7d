// What changed in the batch folder since the loader last looked, for load.ts --watch. A loaded file counts as
// loaded while it looks as it did (LoadedFiles in load.ts), which takes a stat of it; a folder that keeps its
// loaded files (BATCH_RETENTION=keep) holds thousands, and a stat of each at every change made a pass cost the
// whole folder: 3,000 loaded files took 41 % of a core while the consumer added files, 9 % idle. The folder is
// watched instead, and a loaded file is looked at again when the filesystem names it, or when everything is
// looked at: at the start, once a minute, after a report without a name or an error of the watch, and always
// where the folder cannot be watched (not every filesystem reports changes, and a report can be dropped).
// New names need no report: each pass lists the folder.

import { watch, type FSWatcher } from "node:fs";

/** How often a watched folder's loaded files are all looked at again, reported or not. */
export const FULL_LOOK_MS = 60_000;

/** Which loaded files a pass looks at again. */
export type Recheck = (name: string) => boolean;

/** Every loaded file is looked at again (a single run, and each full look). */
export const RECHECK_ALL: Recheck = () => true;

export class FolderChanges {
  private named = new Set<string>();
  private everything = true;
  private lastFull = -Infinity;
  private watcher: FSWatcher | undefined;
  private wake: (() => void) | undefined;

  constructor(
    dir: string,
    private readonly fullLookMs = FULL_LOOK_MS,
    private readonly now: () => number = () => performance.now(),
  ) {
    try {
      this.watcher = watch(dir, (_event, name) => this.report(name == null ? undefined : String(name)));
      this.watcher.on("error", () => this.lose());
    } catch {
      // Not watchable here: every pass looks at everything, and the timer alone paces the loop.
      this.watcher = undefined;
    }
  }

  /** Whether changes are reported at all (false: every pass looks at the whole folder). */
  get watching(): boolean {
    return this.watcher !== undefined;
  }

  /** What changed since the last call, as the loaded files to look at again; everything when a full look is due. */
  take(): Recheck {
    const now = this.now();
    if (!this.watcher || this.everything || now - this.lastFull >= this.fullLookMs) {
      this.everything = false;
      this.named.clear();
      this.lastFull = now;
      return RECHECK_ALL;
    }
    const named = this.named;
    this.named = new Set();
    return (name) => named.has(name);
  }

  /** Resolves at the next change (at once if one came since the last take), after `ms` at the latest, or on abort. */
  next(ms: number, signal: AbortSignal): Promise<void> {
    if (this.named.size > 0 || this.everything || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        this.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      this.wake = done;
    });
  }

  close(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.wake?.();
  }

  private report(name: string | undefined): void {
    if (name === undefined) this.everything = true;
    else this.named.add(name);
    this.wake?.();
  }

  private lose(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.wake?.();
  }
}
