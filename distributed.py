"""cnn.py's models trained on several processes or machines, synchronously, on
TensorFlow's own distributed runtime.

Between-graph data parallelism as TensorFlow 1 documented it: parameter
servers (`ps`) hold the variables (`replica_device_setter`); every worker
builds the same graph, draws its own batches from its own copy of the training
set, and computes gradients; `SyncReplicasOptimizer` averages the next
gradients that arrive for the current weights, as many as there are workers
(normally one from each; a faster worker may give two, and one computed on
older weights is dropped), and applies them once per global step. Since it
takes those gradients from whichever worker, one worker alone could fill
every place: so each worker counts its steps on the parameter servers, takes
its first step once every worker has started, and stops when another's count
stands still. `MonitoredTrainingSession` lets worker 0, the chief,
initialise the variables (the others begin as soon as it has, not at
TensorFlow's next look 30 s later) and write the checkpoints and summaries
into a run folder that `predict.py`, `export.py` and `cnn.py --restore`
read. Each step sees (workers x --batch-size) images.

The cluster comes from flags or from $TF_CONFIG, as TensorFlow users already
describe clusters. One machine, three processes:

    HOSTS="--ps-hosts 127.0.0.1:2222 --worker-hosts 127.0.0.1:2223,127.0.0.1:2224"
    python distributed.py $HOSTS --job-name ps --task-index 0 &
    python distributed.py $HOSTS --job-name worker --task-index 1 --model small &
    python distributed.py $HOSTS --job-name worker --task-index 0 --model small

Several machines: the same commands, one per machine, with their addresses
(every process must reach every other's host:port), or on each machine

    TF_CONFIG='{"cluster": {"ps": ["a:2222"], "worker": ["b:2222", "c:2222"]},
                "task": {"type": "worker", "index": 0}}' python distributed.py --model small

No process waits forever: the parameter servers exit once every worker has
said it is done or has gone (a worker stopping with one of its error lines
says so; one killed, or ended by the watchdog below, has gone when it had said
it started, or its port was seen open, and its port has since been closed for
10 s); a worker stops with one line when no step finishes within
--step-timeout, or another worker has taken no step for that long (a worker
died: synchronous training cannot go on without it), or when the others have
not all started --startup-timeout after its session did.
Each worker's session sees only the parameter servers and itself
(`device_filters`), so the chief does not hang in `close()` after another
worker has gone; should anything else hang once steps have stopped,
a watchdog ends the worker with the same line --step-timeout + 30 s after
its last step.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time

import numpy as np

import cli  # (no TensorFlow inside: it sets how TensorFlow loads)
cli.prepare_tensorflow()  # a quiet start; oneDNN's kernels on every x86-64 CPU
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import cnn  # noqa: E402
import data_helpers  # noqa: E402
import run_folders  # noqa: E402
import sessions  # noqa: E402
from errors import DataError, error_line  # noqa: E402

tf.disable_eager_execution()
tf.logging.set_verbosity(tf.logging.ERROR)   # the v1 distributed APIs print 'deprecated'

NEWS_QUEUE = 'worker_news'    # each parameter server's queue of (worker, news)
STARTED, DONE, FAILED = b'started', b'done', b'failed'
GONE_AFTER = 10               # seconds a started worker's port may stay closed before it has gone


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train cnn.py's models on a cluster (parameter servers and workers, "
                    "synchronous).")
    parser.add_argument('--ps-hosts', help='comma-separated host:port of the parameter '
                        'servers (default: from $TF_CONFIG)')
    parser.add_argument('--worker-hosts', help='comma-separated host:port of the workers; '
                        'the first is the chief')
    parser.add_argument('--job-name', choices=['ps', 'worker'], help='this process\'s job')
    parser.add_argument('--task-index', type=cli.nonnegative_int, help='its index in the job')
    parser.add_argument('--model', choices=sorted(cnn.MODELS), default='small',
                        help='which of cnn.py\'s models (default: small)')
    parser.add_argument('--max-steps', type=cli.positive_int, default=1000,
                        help='global steps (each: one batch from every worker; default: 1000)')
    parser.add_argument('--batch-size', type=cli.positive_int,
                        help='images per worker per step (default: the model\'s)')
    parser.add_argument('--learning-rate', type=cli.positive_float,
                        help='Adam step size (default: the model\'s)')
    parser.add_argument('--log-every', type=cli.positive_int, default=100,
                        help='steps between progress lines and checkpoints (default: 100)')
    parser.add_argument('--step-timeout', type=cli.positive_float, default=300,
                        help='seconds a step may take, or another worker may take no '
                             'step, before a worker is presumed gone (default: 300)')
    parser.add_argument('--startup-timeout', type=cli.positive_float, default=300,
                        help='seconds to wait for the rest of the cluster (default: 300)')
    cli.add_precision_flag(parser, 'fp32', default_help='fp32, so that workers on different '
                           'CPUs compute alike')
    cli.add_common_flags(parser, train_dir='runs',
                         train_dir_help='folder for the chief\'s run folder (default: runs)')
    args = parser.parse_args(argv)
    try:
        args.cluster, args.job_name, args.task_index = cluster_from(args)
    except ValueError as e:
        parser.error(str(e))
    defaults = cnn.MODELS[args.model]
    args.batch_size = args.batch_size or defaults['batch_size']
    args.learning_rate = args.learning_rate or defaults['learning_rate']
    return args


def cluster_from(args):
    """(ClusterSpec dict, job name, task index) from the flags, else $TF_CONFIG."""
    if args.ps_hosts or args.worker_hosts:
        if not (args.ps_hosts and args.worker_hosts and args.job_name
                and args.task_index is not None):
            raise ValueError('--ps-hosts, --worker-hosts, --job-name and --task-index go '
                             'together')
        cluster = {'ps': args.ps_hosts.split(','), 'worker': args.worker_hosts.split(',')}
        job, task = args.job_name, args.task_index
    elif os.environ.get('TF_CONFIG'):
        try:
            config = json.loads(os.environ['TF_CONFIG'])
            cluster = {job: list(config['cluster'][job]) for job in ('ps', 'worker')}
            job, task = config['task']['type'], int(config['task']['index'])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError('$TF_CONFIG: %s; expected {"cluster": {"ps": [...], "worker": '
                             '[...]}, "task": {"type": ..., "index": ...}}' % e) from None
    else:
        raise ValueError('give the cluster: --ps-hosts, --worker-hosts, --job-name and '
                         '--task-index, or $TF_CONFIG')
    if job not in cluster or not 0 <= task < len(cluster[job]):
        raise ValueError('there is no task %s:%d in the cluster %s' % (job, task, cluster))
    return cluster, job, task


def local_addresses(count):
    """`count` free host:port addresses on 127.0.0.1, for a cluster on one machine."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return ['127.0.0.1:%d' % s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# -----------------------------------------------------------------------------
# Parameter servers: serve the variables until every worker is done or gone
# -----------------------------------------------------------------------------

def news_queue(ps_task):
    """The queue on parameter server `ps_task` where each worker puts
    (its index, STARTED) once its session exists and (its index, DONE) at the
    end, or (its index, FAILED) when it stops with an error."""
    with tf.device('/job:ps/task:%d' % ps_task):
        return tf.FIFOQueue(1000, [tf.int32, tf.string], shared_name='%s_%d' % (NEWS_QUEUE, ps_task))


def serve_parameters(server, args):
    """Runs a parameter server; returns when each worker has finished or gone.

    A worker has gone when it said it failed, or when its port has been
    closed for GONE_AFTER s after it said it started (or its port was seen
    open), or it was never seen within --startup-timeout. Its own word
    matters: a worker can start, train and die between two looks at its port.

    Raises:
      DataError: a worker went without finishing (after the others finished).
    """
    workers = args.cluster['worker']
    next_news = news_queue(args.task_index).dequeue()
    started, finished, gone = time.time(), set(), set()
    seen, closed_since = set(), {}
    # The session sees this parameter server only: it needs no worker to start
    config = tf.ConfigProto(device_filters=['/job:ps/task:%d' % args.task_index])
    with tf.Session(server.target, config=config) as session:
        while len(finished | gone) < len(workers):
            try:
                task, news = session.run(next_news, options=tf.RunOptions(timeout_in_ms=1000))
                {DONE: finished, FAILED: gone}.get(news, seen).add(task)
                continue
            except tf.errors.DeadlineExceededError:
                pass
            now = time.time()
            for task, address in enumerate(workers):
                if task in finished | gone:
                    continue
                if reachable(address):
                    seen.add(task)
                    closed_since.pop(task, None)
                elif task in seen:
                    if now - closed_since.setdefault(task, now) > GONE_AFTER:
                        gone.add(task)
                elif now - started > args.startup_timeout:
                    gone.add(task)
    if gone:
        raise DataError('parameter server %d: worker %s did not finish'
                        % (args.task_index, ', '.join(str(task) for task in sorted(gone))))
    print('Parameter server %d: every worker has finished' % args.task_index)


def report_failure(server, args):
    """Tells the parameter servers that this worker stops without finishing,
    so that they need not wait GONE_AFTER s for its port to close; nothing
    if one of them cannot be reached (the failure may be theirs)."""
    if not all(reachable(address) for address in args.cluster['ps']):
        return
    with tf.Graph().as_default():
        failed = [news_queue(i).enqueue((args.task_index, FAILED))
                  for i in range(len(args.cluster['ps']))]
        # (a bound on creating the session too: a parameter server that
        # accepts connections but does not answer would hold it forever)
        config = tf.ConfigProto(device_filters=['/job:ps'], operation_timeout_in_ms=5000)
        try:
            with tf.Session(server.target, config=config) as session:
                session.run(failed, options=tf.RunOptions(timeout_in_ms=5000))
        except tf.errors.OpError:
            pass


def reachable(address):
    """Whether host:port accepts a connection (a server listens there)."""
    host, port = address.rsplit(':', 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


# -----------------------------------------------------------------------------
# Workers: the graph on the cluster, the monitored session, the loop
# -----------------------------------------------------------------------------

class SamplerHook(tf.train.SessionRunHook):
    """Copies this worker's training set into its sampler once the session exists."""

    def __init__(self, sampler):
        self.sampler = sampler

    def after_create_session(self, session, coord):
        self.sampler.initialize(session)


class WorkersAliveHook(tf.train.SessionRunHook):
    """Counts the steps this worker begins in a vector on the parameter
    servers, one count per worker, and watches the others': this worker's
    first step waits until every worker has started (every count >= 1), and a
    worker whose count has not moved for --step-timeout stops this one with
    one line.

    Needed because SyncReplicasOptimizer takes its gradients from whichever
    worker gives them: one worker alone fills every place, before the others
    start or after one has died, and its steps never time out.
    """

    def __init__(self, step_counts, task, step_timeout, startup_timeout):
        self.step_counts, self.task = step_counts, task
        self.step_timeout, self.startup_timeout = step_timeout, startup_timeout
        self.count_step = tf.scatter_add(step_counts, [task], tf.ones([1], tf.int64))

    def after_create_session(self, session, coord):
        wait = tf.RunOptions(timeout_in_ms=int(self.startup_timeout * 1000))
        counts = session.run(self.count_step, options=wait)     # this worker: started
        deadline = time.monotonic() + self.startup_timeout
        while not counts.all():
            if time.monotonic() > deadline:
                raise DataError('worker %d: worker %s did not start within %g s '
                                '(--startup-timeout)' % (self.task, task_list(counts == 0),
                                                         self.startup_timeout))
            time.sleep(0.2)
            counts = session.run(self.step_counts, options=wait)
        self.counts, self.moved = counts, np.full(len(counts), time.monotonic())

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(self.count_step)

    def after_run(self, run_context, run_values):
        counts, now = run_values.results, time.monotonic()
        self.moved[counts != self.counts] = now
        self.counts = counts
        stalled = now - self.moved > self.step_timeout
        if stalled.any():
            raise DataError('worker %d: worker %s took no step in %g s (--step-timeout): '
                            'stopped, probably, and synchronous training cannot go on '
                            'without it' % (self.task, task_list(stalled), self.step_timeout))


def task_list(chosen):
    """'1' or '1, 2': the indices where the boolean vector `chosen` is true."""
    return ', '.join(str(task) for task in np.flatnonzero(chosen))


class AnnounceHook(tf.train.SessionRunHook):
    """Tells the parameter servers this worker has started, once the session exists."""

    def __init__(self, started):
        self.started = started

    def after_create_session(self, session, coord):
        session.run(self.started)


def train_worker(server, args):
    """One worker's share of synchronous training; the chief (task 0) also
    creates the run folder and writes checkpoints and summaries there."""
    num_workers, task = len(args.cluster['worker']), args.task_index
    is_chief = task == 0
    args.precision = cli.precision(args.precision)
    worker_device = '/job:worker/task:%d' % task
    # TensorFlow's chief would wait for the parameter servers without a time
    # limit: wait for their ports first, within --startup-timeout
    wait_for(args.cluster['ps'], args.startup_timeout, 'parameter server')
    data_sets = data_helpers.load_data(args.data_dir, normalization='scale', layout='nhwc')
    train_images, train_labels = data_sets['images_train'], data_sets['labels_train']
    cli.check_batch_size(args.batch_size, len(train_images))
    run_dir = None
    if is_chief:
        run_dir = run_folders.start_run_dir(args.train_dir, args.model + '-', data_sets['classes'],
                                            'cifar10', 'nhwc', script='cnn', model=args.model,
                                            precision=args.precision)
        print('Writing to {}'.format(run_dir))

    # The graph: variables on the parameter servers, the rest on this worker;
    # Adam made synchronous: one update per global step, from as many
    # gradients as there are workers
    sync_optimizer = None

    def synchronous(optimizer):
        nonlocal sync_optimizer
        sync_optimizer = tf.train.SyncReplicasOptimizer(
            optimizer, replicas_to_aggregate=num_workers, total_num_replicas=num_workers)
        return sync_optimizer

    with tf.device(tf.train.replica_device_setter(worker_device=worker_device,
                                                  cluster=args.cluster)):
        ops = cnn.build_graph(args.model, train_images, train_labels, args.batch_size,
                              args.learning_rate, args.precision,
                              sampler_device=worker_device + '/cpu:0',
                              wrap_optimizer=synchronous)
        # (named so that its TensorBoard tag is unique, not 'loss_2' beside
        # the model's 'loss' scopes)
        tf.summary.scalar('training_loss', ops.loss)
        # Each worker's steps, counted where all see them (WorkersAliveHook),
        # made after the model so that a seed draws the same weights as
        # before, and saved with it, as a restarted parameter server needs
        step_counts = tf.Variable(tf.zeros([num_workers], tf.int64), trainable=False,
                                  name='worker_step_counts')
        saver = checkpoints.saver(max_to_keep=3)
    queues = [news_queue(i) for i in range(len(args.cluster['ps']))]
    started = [queue.enqueue((task, STARTED)) for queue in queues]
    done = [queue.enqueue((task, DONE)) for queue in queues]
    # A worker's step ends when it takes a token, and tokens come only from
    # updates: once one worker stops at --max-steps, another that had fallen
    # behind (its gradients dropped as stale) would wait for a token forever.
    # Leaving, each worker puts one token for every worker
    release_the_others = sync_optimizer.get_init_tokens_op(num_workers)

    # The session: this worker sees the parameter servers and itself only
    config = sessions.session_config()
    config.device_filters.extend(['/job:ps', worker_device])
    # Hooks run in order, the chief's own first, then its checkpoint saver: so
    # on the chief the wait for the others comes before the first checkpoint,
    # and a cluster that never assembles leaves no untrained one behind
    first = [sync_optimizer.make_session_run_hook(is_chief),
             WorkersAliveHook(step_counts, task, args.step_timeout, args.startup_timeout)]
    rest = [SamplerHook(ops.sampler), AnnounceHook(started),
            tf.train.StopAtStepHook(last_step=args.max_steps)]
    # Each worker its own order of the training set (seeded by --seed and its index)
    rng = np.random.default_rng(None if args.seed is None else [args.seed, task])
    batches = data_helpers.epoch_indices(len(train_images), args.batch_size, 10 ** 12, rng)
    step_options = tf.RunOptions(timeout_in_ms=int(args.step_timeout * 1000))
    lost = ('worker %d: no step finished in %g s (--step-timeout): a worker has probably '
            'stopped, and synchronous training cannot go on without it'
            % (task, args.step_timeout))
    watchdog = Watchdog(args.step_timeout + 30, lost)
    global_step = tf.train.get_global_step()
    local_steps, step, session_ready = 0, 0, False
    try:
        if not is_chief:     # (also what lets --startup-timeout be under 30 s)
            wait_for_the_chief(server.target, config, task, args.startup_timeout)
        with tf.train.MonitoredTrainingSession(
                master=server.target, is_chief=is_chief, checkpoint_dir=run_dir,
                chief_only_hooks=first, hooks=rest if is_chief else first + rest,
                scaffold=tf.train.Scaffold(saver=saver),
                save_checkpoint_steps=args.log_every, save_summaries_steps=args.log_every,
                config=config, max_wait_secs=args.startup_timeout,
                # Closing, the chief's SyncReplicasOptimizer thread still waits
                # for the next step's gradients, which no longer come; it ends
                # when the session closes, after this grace (at 10 s, every
                # run's chief sat 10 s at the end). The final checkpoint and
                # summaries are written before it, by the hooks.
                stop_grace_period_secs=1) as session:
            session_ready = True
            watchdog.step_finished()     # armed from here: the first step counts too
            while not session.should_stop():
                _, loss, step = session.run([ops.train_step, ops.loss, global_step],
                                            {ops.sampler.indices: next(batches)},
                                            options=step_options)
                local_steps += 1
                watchdog.step_finished()
                if local_steps == 1:     # the rate leaves the start-up out
                    start, first_step = time.time(), step
                elif local_steps % args.log_every == 0:
                    print('Worker %d: global step %d - loss: %.4f - %.2f global steps/s'
                          % (task, step, loss, (step - first_step) / (time.time() - start)),
                          flush=True)
            watchdog.disarm()      # done: the final checkpoint may take its time
    except tf.errors.DeadlineExceededError:
        if not session_ready:
            raise not_ready(task, args.startup_timeout) from None
        raise DataError(lost) from None
    except tf.errors.OpError as e:
        raise DataError('worker %d: the cluster failed (%s)' % (task, error_line(e)))

    # Tell the parameter servers this worker is done
    try:
        wait_for(args.cluster['ps'], 10, 'parameter server')
        with tf.Session(server.target, config=config) as session:
            step = session.run(global_step)
            try:
                session.run(release_the_others, options=tf.RunOptions(timeout_in_ms=10000))
            except tf.errors.OpError:
                pass        # the chief has left and closed the token queue: nobody waits
            session.run(done, options=tf.RunOptions(timeout_in_ms=10000))
    except (DataError, tf.errors.OpError) as e:
        print('distributed.py: worker %d could not tell the parameter servers it is done '
              '(%s)' % (task, e), file=sys.stderr)
    print('Worker %d: done at global step %d%s' % (
        task, step, ('; evaluate with: python cnn.py --restore %s' % run_dir) if is_chief else ''))
    return run_dir


class Watchdog:
    """Ends the process with one line when no step has finished for `seconds`
    while armed: the last guard, should closing the session hang after a
    worker has gone (the step timeout itself raises well before)."""

    def __init__(self, seconds, message):
        self.seconds, self.message = seconds, message
        self.last_step, self.armed = time.time(), False
        threading.Thread(target=self._watch, daemon=True).start()

    def step_finished(self):
        self.last_step, self.armed = time.time(), True

    def disarm(self):
        self.armed = False

    def _watch(self):
        while True:
            time.sleep(1)
            if self.armed and time.time() - self.last_step > self.seconds:
                leave_now('%s: error: %s' % (os.path.basename(sys.argv[0]), self.message), 1)


def leave_now(line, status):
    """Ends this process at once with `line` last: torn down at the
    interpreter's exit, this task's gRPC server could log its peers' broken
    connections after the line (seen in CI: "Error received from peer ...
    Broken pipe"). What it printed goes first; the chief's summaries are
    written out (os._exit flushes no file), within 10 s."""
    cli.flush_stdout()
    if line:
        try:
            print(line, file=sys.stderr, flush=True)
        except (OSError, ValueError):     # a reader gone: the status still says it
            pass
    closing = threading.Thread(target=_close_summary_writers, daemon=True)
    closing.start()
    closing.join(10)
    os._exit(status)


def _close_summary_writers():
    try:
        tf.summary.FileWriterCache.clear()     # closes them
    except Exception:                          # any: the line is out, the status stands
        pass


def wait_for(addresses, timeout, what):
    """Returns once every address accepts connections; DataError after `timeout` s."""
    deadline = time.time() + timeout
    for address in addresses:
        while not reachable(address):
            if time.time() > deadline:
                raise DataError('no %s at %s after %g s (--startup-timeout)'
                                % (what, address, timeout))
            time.sleep(1)


def wait_for_the_chief(target, config, task, timeout):
    """Returns once the chief has initialised the variables.

    A worker's MonitoredTrainingSession looks only every 30 s (its
    SessionManager's recovery_wait_secs), so it would start up to 30 s after
    the chief, and with less than 30 s of --startup-timeout left it would give
    up at its first look; this looks every 0.2 s.

    Args:
      target: this worker's server target.
      config: the worker's session ConfigProto (its device filters).
      task: this worker's index, for the message.
      timeout: seconds to wait in all (--startup-timeout).

    Raises:
      DataError: the variables were not initialised within `timeout`.
    """
    uninitialized = tf.report_uninitialized_variables(tf.global_variables())
    deadline = time.monotonic() + timeout
    late = not_ready(task, timeout)
    with tf.Session(target, config=config) as session:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise late
            try:
                if not session.run(uninitialized, options=tf.RunOptions(
                        timeout_in_ms=max(1, int(left * 1000)))).size:
                    return
            except tf.errors.DeadlineExceededError:
                raise late from None
            time.sleep(0.2)


def not_ready(task, timeout):
    """The error of a worker whose cluster did not assemble in --startup-timeout."""
    return DataError('worker %d: the cluster was not ready within %g s (--startup-timeout)'
                     % (task, timeout))


def quiet_cancelled_queue_runners():
    """SyncReplicasOptimizer's token thread on the chief is cancelled when the
    session closes, and TensorFlow reports that as an uncaught exception;
    let that one pass, and every other exception through."""
    default = threading.excepthook

    def hook(args):
        if not (issubclass(args.exc_type, tf.errors.CancelledError)
                and args.thread.name.startswith('QueueRunnerThread')):
            default(args)
    threading.excepthook = hook


def main(args):
    try:
        server = tf.distribute.Server(tf.train.ClusterSpec(args.cluster), job_name=args.job_name,
                                      task_index=args.task_index, start=True)
    except (tf.errors.OpError, ValueError, RuntimeError) as e:
        raise DataError('cannot start %s %d at %s (%s)' % (
            args.job_name, args.task_index, args.cluster[args.job_name][args.task_index],
            error_line(e))) from None
    sessions.fresh_graph(args.seed)
    if args.job_name == 'ps':
        return serve_parameters(server, args)
    # SyncReplicasOptimizer's token thread on the chief ends with an uncaught
    # CancelledError when the session closes; nothing went wrong, so say nothing
    quiet_cancelled_queue_runners()
    try:
        return train_worker(server, args)
    except (DataError, OSError, KeyboardInterrupt):    # the ones that end in one line
        report_failure(server, args)
        raise


if __name__ == '__main__':
    try:
        cli.exit_on_error(main, parse_args())
    except SystemExit as e:       # the one line, and out at once (leave_now)
        if e.code in (None, 0):
            raise
        leave_now(e.code if isinstance(e.code, str) else None,
                  e.code if isinstance(e.code, int) else 1)
