import { MessageChannel, type MessagePort, Worker } from "node:worker_threads";

/** How a thread's program reports a job it could not do. */
export interface JobFailure {
  readonly message: string;
  readonly code?: string;
}

/**
 * The main thread's half of a helper thread that takes jobs off a port without an event loop (so a job
 * starts the moment it is posted, however busy the main thread is): the program finds its port as
 * `workerData.jobs` and sleeps on `workerData.signal`, a counter bumped after each post; it answers each
 * job with `{ id }` or `{ id, error }`. The thread is referenced only while a job is outstanding, so an
 * idle one never keeps the process alive, and a thread that dies fails whatever waits on it.
 */
export class JobThread {
  private readonly worker: Worker;
  private readonly jobs: MessagePort;
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));
  private readonly waiting = new Map<number, { resolve(): void; reject(e: Error): void }>();
  private nextId = 0;
  private failure: Error | undefined;

  /**
   * `program` is CommonJS source evaluated in the worker (it needs no file beside the compiled module and
   * runs the same from the TypeScript sources under test); `what` names the thread in its failures.
   */
  constructor(program: string, workerData: Record<string, unknown>, what: string, failed: (f: JobFailure) => Error) {
    const { port1, port2 } = new MessageChannel();
    this.jobs = port1;
    this.worker = new Worker(program, {
      eval: true,
      // The parent's flags would carry over, and with `--input-type=module` the program would not be CommonJS.
      execArgv: [],
      workerData: { ...workerData, signal: this.signal, jobs: port2 },
      transferList: [port2],
    });
    this.worker.on("message", (m: { id: number; error?: JobFailure }) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (this.waiting.size === 0) this.worker.unref();
      if (m.error) w.reject(failed(m.error));
      else w.resolve();
    });
    // A program has no way to fail but a bug or running out of memory; whatever waits is told so.
    this.worker.on("error", (e) => this.fail(e instanceof Error ? e : new Error(String(e))));
    this.worker.on("exit", () => this.fail(new Error(`internal: the ${what} stopped`)));
    // After the listeners: adding one refs the worker again.
    this.worker.unref();
  }

  /** False once the thread has died: what was waiting failed, and later jobs should go another way. */
  get alive(): boolean {
    return this.failure === undefined;
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const w of this.waiting.values()) w.reject(this.failure);
    this.waiting.clear();
  }

  /** Post one job (its `id` is added); settles when the thread has done it. */
  post(job: Record<string, unknown>): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const done = new Promise<void>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    if (this.waiting.size === 1) this.worker.ref();
    this.jobs.postMessage({ ...job, id });
    Atomics.add(this.signal, 0, 1);
    Atomics.notify(this.signal, 0);
    return done;
  }
}
