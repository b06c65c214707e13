"""distributed.py: 2 workers on 127.0.0.1 as subprocesses with a hard time
limit and their parameter server in this process: a synchronous run, a worker
killed mid-run. In the test process: clusters that never assemble (a chief
without its other worker, a chief without its parameter server), the
watchdog, the wait for the chief, the parameter server's grace, a worker's
report of its failure, the flags and $TF_CONFIG."""

import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow.compat.v1 as tf

import cnn
import distributed
import predict
from conftest import end_processes
from errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 150          # seconds any process of a test may live


class ParameterServer(threading.Thread):
    """Parameter server 0, distributed.main in a thread of this process (a
    TensorFlow start-up spared, 4 CPU-s), read as its process would be:
    returncode 0 once every worker has finished, 1 once it stopped with an
    error (`error`). It cannot be killed: it ends by itself, as its process
    would. (Its server, as every server of this process, lives on.)"""

    def __init__(self, args):
        super().__init__(daemon=True)
        self.flags, self.returncode, self.error = args, None, None
        self.start()

    def run(self):
        try:
            distributed.main(self.flags)      # (this thread's own default graph)
            self.returncode = 0
        except Exception as e:       # any: the test that fails says which
            self.error = e
        finally:
            if self.returncode is None:
                self.returncode = 1

    def poll(self):
        return self.returncode

    def wait(self, timeout):
        self.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired('parameter server 0', timeout)
        return self.returncode


class Cluster:
    """1 ps (here) + 2 workers (subprocesses); every process killed when the
    test ends, whatever happens."""

    def __init__(self, tmp_path, data_dir, *worker_flags):
        ps, w0, w1 = distributed.local_addresses(3)
        hosts = ['--ps-hosts', ps, '--worker-hosts', w0 + ',' + w1]
        flags = ['--data-dir', data_dir, '--train-dir', str(tmp_path / 'runs'),
                 '--batch-size', '16', '--seed', '0', '--startup-timeout', '60'] + list(worker_flags)
        self.logs = {}
        # (their output buffered, as a user's is when it goes to a file or a
        # pipe: each worker's line still comes last)
        env = {name: value for name, value in os.environ.items() if name != 'PYTHONUNBUFFERED'}
        self.processes = {'ps': ParameterServer(distributed.parse_args(
            hosts + ['--job-name', 'ps', '--task-index', '0', '--startup-timeout', '60']))}
        for name, task in (('worker1', 1), ('worker0', 0)):
            self.logs[name] = open(tmp_path / (name + '.log'), 'w+')
            self.processes[name] = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, 'distributed.py')] + hosts +
                ['--job-name', 'worker', '--task-index', str(task)] + flags,
                stdout=self.logs[name], stderr=subprocess.STDOUT, cwd=str(tmp_path), env=env)
        self.start = time.time()

    def output(self, name):
        """A worker's output; the parameter server's error, if any."""
        if name == 'ps':
            return '' if self.processes['ps'].error is None else str(self.processes['ps'].error)
        self.logs[name].flush()
        self.logs[name].seek(0)
        return self.logs[name].read()

    def everything(self):
        """Every process's output, labelled: what a failed assertion shows."""
        return '\n'.join('--- %s (exit %s) ---\n%s' % (name, self.processes[name].poll(),
                                                      self.output(name))
                         for name in self.processes)

    def wait(self, name):
        """The process's exit status; fails the test past the time limit."""
        try:
            return self.processes[name].wait(timeout=max(1, LIMIT - (time.time() - self.start)))
        except subprocess.TimeoutExpired:
            pytest.fail('%s still running after %d s:\n%s' % (name, LIMIT, self.everything()))

    def wait_all(self):
        """{name: (exit status, when it was seen to end)}, polled; fails the
        test past the time limit."""
        ends = {}
        while len(ends) < len(self.processes):
            for name, process in self.processes.items():
                if name not in ends and process.poll() is not None:
                    ends[name] = process.returncode, time.monotonic()
            if len(ends) < len(self.processes) and time.time() - self.start > LIMIT:
                pytest.fail('still running after %d s:\n%s' % (LIMIT, self.everything()))
            time.sleep(0.1)
        return ends

    def close(self):
        end_processes([self.processes['worker0'], self.processes['worker1']])
        for log in self.logs.values():
            log.close()


@pytest.fixture
def cluster(tmp_path, fake_cifar10):
    clusters = []

    def start(*flags):
        clusters.append(Cluster(tmp_path, fake_cifar10, *flags))
        return clusters[-1]
    yield start
    for c in clusters:
        c.close()


def test_synchronous_run_on_one_ps_and_two_workers(cluster, tmp_path, fake_cifar10, capsys):
    # 20 s to start, under TensorFlow's 30 s between looks (allowed since
    # worker 1 waits for the chief itself; that wait is tested on its own
    # below: here worker 1 often finds the chief ready at its first look)
    c = cluster('--max-steps', '12', '--log-every', '4', '--step-timeout', '60',
                '--startup-timeout', '20')
    ends = c.wait_all()
    assert {name: status for name, (status, _) in ends.items()} == {
        'ps': 0, 'worker0': 0, 'worker1': 0}, c.everything()
    # They end together: the chief, closing, does not wait for a next step's
    # gradients that no longer come (it did for 10 s; they end ~1 s apart)
    times = [when for _, when in ends.values()]
    assert max(times) - min(times) < 8, c.everything()
    finals = [re.search(r'Worker %d: done at global step (\d+)' % task,
                        c.output('worker%d' % task)).group(1) for task in (0, 1)]
    assert finals == ['12', '12'], c.everything()      # one global step, shared
    assert 'Parameter server 0: every worker has finished' in capsys.readouterr().out
    assert 'Traceback' not in c.output('worker0') + c.output('worker1'), c.everything()
    # The chief's run folder: checkpoints that predict.py and cnn.py --restore read
    runs = os.listdir(tmp_path / 'runs')
    assert len(runs) == 1 and runs[0].startswith('small-')
    run_dir = str(tmp_path / 'runs' / runs[0])
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(run_dir))
    assert predict.main(predict.parse_args([run_dir, '--test-index', '0', '--data-dir',
                                            fake_cifar10])) == 0
    assert 'test image 0' in capsys.readouterr().out
    cnn.main(cnn.parse_args(['--model', 'small', '--restore', run_dir,
                             '--data-dir', fake_cifar10]))
    assert 'model.ckpt-12' in capsys.readouterr().out


def test_a_killed_worker_stops_the_others_in_bounded_time(cluster, monkeypatch, tmp_path):
    # The parameter server (here) counts a worker whose port stays closed
    # 5 s as gone, not GONE_AFTER's 10 s, and the step timeout is 5 s too
    monkeypatch.setattr(distributed, 'GONE_AFTER', 5)
    c = cluster('--max-steps', '100000', '--log-every', '5', '--step-timeout', '5')
    # Both training (so the chief has steps, and summaries, behind it)
    while not all('global step' in c.output(worker) for worker in ('worker0', 'worker1')):
        assert time.time() - c.start < LIMIT, c.everything()
        assert c.processes['worker0'].poll() is None, c.everything()
        assert c.processes['worker1'].poll() is None, c.everything()
        time.sleep(0.2)
    c.processes['worker1'].send_signal(signal.SIGKILL)
    killed = time.time()
    assert c.wait('worker0') == 1, c.everything()
    stopped = time.time()
    assert stopped - killed < 60
    # Its step times out, or (when it can still take steps alone, filling
    # worker 1's places in SyncReplicasOptimizer) worker 1's count stands still
    last = c.output('worker0').strip().splitlines()[-1]
    assert re.match(r'distributed.py: error: worker 0: (no step finished|worker 1 took no step) '
                    r'in 5 s \(--step-timeout\)', last), c.everything()
    # The chief's summaries are in its run folder, though it left in a hurry
    events, = glob.glob(str(tmp_path / 'runs' / '*' / 'events.out.tfevents.*'))
    assert any(value.tag == 'training_loss' for event in tf.train.summary_iterator(events)
               for value in event.summary.value), c.everything()
    assert c.wait('ps') == 1, c.everything()
    assert isinstance(c.processes['ps'].error, DataError), c.everything()
    assert c.output('ps') == 'parameter server 0: worker 0, 1 did not finish', c.everything()
    # Worker 0 said it failed: the parameter server did not wait for its port
    # to stay closed 5 s more (worker 1's 5 s ran out while worker 0 timed out)
    assert time.time() - stopped < 4, c.everything()


def test_the_watchdog_ends_a_stuck_process_with_one_line_unless_disarmed(monkeypatch, capsys):
    # Three dogs in this process (not to pay a process's start-up): the armed
    # one past its time ends the process, the disarmed one and the one whose
    # time has not come let it live. os._exit is recorded, and stops the dog
    # that called it, as ending the process would (no second call, and none
    # once the real os._exit is back)
    exits = []

    def exit_here(status):
        exits.append((status, time.time()))
        stuck.disarm()
    monkeypatch.setattr(os, '_exit', exit_here)
    monkeypatch.setattr(sys, 'argv', ['distributed.py'])
    stuck = distributed.Watchdog(0.5, 'worker 0: stuck')
    disarmed = distributed.Watchdog(0.5, 'worker 1: stuck')
    patient = distributed.Watchdog(60, 'worker 2: stuck')
    for dog in (stuck, disarmed, patient):
        dog.step_finished()
    disarmed.disarm()
    start = time.time()
    try:
        while not exits and time.time() - start < LIMIT:
            time.sleep(0.1)
        time.sleep(max(0, 2.5 - (time.time() - start)))   # the others' looks too
    finally:
        for dog in (stuck, disarmed, patient):   # their threads live on here: keep them
            dog.disarm()                         # quiet, even when one of the two is broken
            dog.seconds = float('inf')
    assert len(exits) == 1 and exits[0][0] == 1
    assert 0.5 < exits[0][1] - start < 5
    assert capsys.readouterr().err.splitlines() == ['distributed.py: error: worker 0: stuck']


def parameter_server_here(*news):
    """Parameter server 0 of 1 ps and 2 workers, in this process, its queue
    holding `news`: (server, its parsed flags)."""
    ps, w0, w1 = distributed.local_addresses(3)
    args = distributed.parse_args(['--ps-hosts', ps, '--worker-hosts', w0 + ',' + w1,
                                   '--job-name', 'ps', '--task-index', '0',
                                   '--startup-timeout', '60'])
    server = tf.distribute.Server(tf.train.ClusterSpec(args.cluster), job_name='ps',
                                  task_index=0, start=True)
    config = tf.ConfigProto(device_filters=['/job:ps/task:0'])
    with tf.Graph().as_default(), tf.Session(server.target, config=config) as session:
        queue = distributed.news_queue(0)
        for item in news:
            session.run(queue.enqueue(item))
    return server, args


def test_a_worker_that_said_it_started_and_went_is_gone_after_the_grace(monkeypatch):
    # The race the port checks alone lost: a worker starts, trains and dies
    # between two looks at its port. Its word that it started is enough; the
    # parameter server (in this process) need never see its port open.
    monkeypatch.setattr(distributed, 'GONE_AFTER', 2)
    server, args = parameter_server_here((0, distributed.STARTED), (1, distributed.STARTED),
                                         (0, distributed.DONE))
    start = time.time()
    with tf.Graph().as_default(), pytest.raises(
            DataError, match='^parameter server 0: worker 1 did not finish$'):
        distributed.serve_parameters(server, args)
    # Its first look at the port (after 1 s) starts the 2 s and a later look
    # ends them (without the grace it ends at that first look); and it is not
    # the 60 s of --startup-timeout
    assert 2.5 < time.time() - start < 20


def test_a_worker_that_reports_its_failure_is_gone_at_once(monkeypatch):
    # What a worker stopping with an error does (report_failure, here as worker 1
    # through the parameter server's own target): no grace to wait out
    monkeypatch.setattr(distributed, 'GONE_AFTER', 60)
    server, args = parameter_server_here((0, distributed.STARTED), (1, distributed.STARTED),
                                         (0, distributed.DONE))
    worker_1 = distributed.parse_args(['--ps-hosts', ','.join(args.cluster['ps']),
                                       '--worker-hosts', ','.join(args.cluster['worker']),
                                       '--job-name', 'worker', '--task-index', '1'])
    distributed.report_failure(server, worker_1)
    start = time.time()
    with tf.Graph().as_default(), pytest.raises(
            DataError, match='^parameter server 0: worker 1 did not finish$'):
        distributed.serve_parameters(server, args)
    assert time.time() - start < 10


def test_a_worker_starts_once_the_chief_has_initialised_the_variables():
    # Not TensorFlow's next look, 30 s later; and never past --startup-timeout
    ps, = distributed.local_addresses(1)
    server = tf.distribute.Server(tf.train.ClusterSpec({'ps': [ps]}), job_name='ps',
                                  task_index=0, start=True)
    graph = tf.Graph()
    with graph.as_default():
        with tf.device('/job:ps/task:0'):
            weights = tf.Variable(1.0)
        with pytest.raises(DataError, match=r'^worker 1: the cluster was not ready within 0.5 s '
                                            r'\(--startup-timeout\)$'):
            distributed.wait_for_the_chief(server.target, None, 1, 0.5)

    def chief_initialises():
        with graph.as_default(), tf.Session(server.target) as session:
            session.run(weights.initializer)
    chief = threading.Timer(1, chief_initialises)
    start = time.monotonic()
    chief.start()
    with graph.as_default():
        distributed.wait_for_the_chief(server.target, None, 1, 60)
    chief.join()
    assert 1 <= time.monotonic() - start < 10


def test_cluster_from_tf_config_and_bad_flags(monkeypatch, capsys):
    monkeypatch.setenv('TF_CONFIG', '{"cluster": {"ps": ["a:1"], "worker": ["b:2", "c:3"]}, '
                                    '"task": {"type": "worker", "index": 1}}')
    args = distributed.parse_args([])
    assert args.cluster == {'ps': ['a:1'], 'worker': ['b:2', 'c:3']}
    assert (args.job_name, args.task_index) == ('worker', 1)
    monkeypatch.setenv('TF_CONFIG', '{"cluster": {}}')
    with pytest.raises(SystemExit):
        distributed.parse_args([])
    assert '$TF_CONFIG' in capsys.readouterr().err
    monkeypatch.delenv('TF_CONFIG')
    for argv in ([], ['--ps-hosts', 'a:1'],
                 ['--ps-hosts', 'a:1', '--worker-hosts', 'b:2', '--job-name', 'worker',
                  '--task-index', '1']):
        with pytest.raises(SystemExit):
            distributed.parse_args(argv)
        assert 'error:' in capsys.readouterr().err


def test_nobody_there_is_one_line_in_bounded_time(tmp_path, fake_cifar10, monkeypatch):
    # A parameter server and a chief whose other worker never comes (the chief
    # alone could fill SyncReplicasOptimizer's every place and train on), and
    # a chief whose parameter server never comes: each stops by itself, with
    # one error. All in this process, side by side in threads (two start-ups
    # spared); how a process ends on such an error, its line last and its
    # output buffered, the killed worker's test shows for a worker (its
    # parameter server, here too, is a thread). What cannot be undone stays:
    # the servers, and the lone chief's session that TensorFlow leaves open
    # with its token thread waiting, idle. A broken guard lets a chief train
    # its few --max-steps and finish: the test fails, nothing trains on.
    def flags(hosts, argv):
        return distributed.parse_args(
            ['--ps-hosts', hosts[0], '--worker-hosts', hosts[1] + ',' + hosts[2],
             '--startup-timeout', '3'] + argv)

    chief = ['--job-name', 'worker', '--task-index', '0', '--data-dir', fake_cifar10,
             '--train-dir', str(tmp_path / 'runs'), '--batch-size', '16', '--max-steps', '20']
    addresses = distributed.local_addresses(6)          # six different ports
    no_worker_1, no_ps = addresses[:3], addresses[3:]
    monkeypatch.setattr(threading, 'excepthook', threading.excepthook)   # main sets its own
    deadline = time.monotonic() + LIMIT
    ps = ParameterServer(flags(no_worker_1, ['--job-name', 'ps', '--task-index', '0']))
    errors = {}

    def run(name, args):
        try:
            distributed.main(args)
        except Exception as e:        # any: the assertions below say which
            errors[name] = e
    chiefs = [threading.Thread(target=run, args=(name, flags(hosts, chief)), daemon=True)
              for name, hosts in (('lone chief', no_worker_1), ('no ps', no_ps))]
    for thread in chiefs:
        thread.start()
    for thread in chiefs:
        thread.join(max(0, deadline - time.monotonic()))
        assert not thread.is_alive(), 'a chief still running after %d s' % LIMIT
    assert ps.wait(max(0, deadline - time.monotonic())) == 1
    assert str(ps.error) == 'parameter server 0: worker 0, 1 did not finish'
    assert {name: (type(e), str(e)) for name, e in errors.items()} == {
        'lone chief': (DataError, 'worker 0: worker 1 did not start within 3 s '
                                  '(--startup-timeout)'),
        'no ps': (DataError, 'no parameter server at %s after 3 s (--startup-timeout)'
                  % no_ps[0])}
    # ... before its first checkpoint: nothing untrained for predict.py to find
    assert glob.glob(str(tmp_path / 'runs' / '*' / '*.index')) == []
