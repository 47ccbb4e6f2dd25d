/**
 * Redraws at most once per animation frame: any number of `invalidate()`
 * calls between two frames cost one `requestAnimationFrame` callback.
 *
 * @module
 */
export class FrameScheduler {
  private pending = false;

  constructor(private readonly draw: (now: number) => void) {}

  invalidate(): void {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame((now) => {
      this.pending = false;
      this.draw(now);
    });
  }
}
