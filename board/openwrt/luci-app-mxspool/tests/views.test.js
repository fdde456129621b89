'use strict';
/*
 * The views against the real daemon: every `/usr/sbin/mxspool ...` a view
 * runs is run for real (MXSPOOL_UI_BIN -c MXSPOOL_UI_CONFIG), so the JSON
 * the views read is what the daemon prints today. Run by
 * tests/integration/test_openwrt_ui.py, which starts the daemon with a
 * down primary and queued mail (MXSPOOL_UI_PHASE=up), then stops it
 * (MXSPOOL_UI_PHASE=down). MXSPOOL_UI_EXPECT (JSON) says what it set up.
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { execFile } = require('node:child_process');
const drive = require('./drive.js');
const luci = drive.luci;

function need(name) {
	const v = process.env[name];
	if (!v)
		throw new Error(`${name} is not set: run this through tests/integration/test_openwrt_ui.py`);
	return v;
}

const PHASE = need('MXSPOOL_UI_PHASE');
const BIN = need('MXSPOOL_UI_BIN');
const CONFIG = need('MXSPOOL_UI_CONFIG');
const RUNNER = (process.env.MXSPOOL_UI_RUNNER || '').split(' ').filter(Boolean);
const EXPECT = JSON.parse(need('MXSPOOL_UI_EXPECT'));

/* The real CLI for /usr/sbin/mxspool, the daemon's log for logread. */
function live(cmd, args) {
	if (cmd === '/sbin/logread') {
		assert.deepEqual(Array.from(args), ['-e', 'mxspool']);
		const text = fs.readFileSync(EXPECT.log, 'utf8');
		return Promise.resolve({ code: 0, stdout: text, stderr: '' });
	}
	assert.equal(cmd, drive.MXSPOOL);
	const argv = RUNNER.concat([BIN], Array.from(args), ['-c', CONFIG]);
	return new Promise(resolve => {
		execFile(argv[0], argv.slice(1), { timeout: 60000 }, (err, stdout, stderr) => {
			const code = err ? (typeof err.code === 'number' ? err.code : 255) : 0;
			resolve({ code, stdout, stderr });
		});
	});
}

async function page(rel) {
	luci.reset();
	luci.env.execHandler = live;
	luci.env.uci = { mxspool: { mxspool: [{ '.name': 'main' }], domain: EXPECT.domains.map((d, i) => ({ '.name': `d${i}`, name: d })) } };
	const p = await drive.open(rel);
	p.rec = luci.env.recorded;
	return p;
}

const rows = node => node.findAll(n => n.tag === 'tr' && n.attrs['data-id']);
const cell = (table, label) => {
	const tr = table.find(n => n.tag === 'tr' && n.children[0] && n.children[0].textContent === label);
	assert.ok(tr, `no row '${label}'`);
	return tr.children[1].textContent;
};
const notes = rec => rec.notifications.map(n => n.node.textContent);

if (PHASE === 'up') {
	test('the queue page shows the real queue: one row per message, the fields filled', async () => {
		const { node, rec } = await page('view/mxspool/queue');
		const ids = rows(node).map(r => r.attrs['data-id']);
		assert.deepEqual(ids.slice().sort(), EXPECT.ids.slice().sort());
		for (const r of rows(node)) {
			const c = r.children.map(x => x.textContent);
			/* id, age, size, sender, recipients, destination, attempts, next, last error */
			assert.equal(c[0], r.attrs['data-id']);
			assert.match(c[1], /^\d+[dhms]/);
			assert.match(c[2], /^\d+(\.\d)? (B|KiB|MiB)$/);
			assert.equal(c[3], EXPECT.sender);
			assert.equal(c[4], EXPECT.recipients.join(', '));
			assert.ok(c[5].includes(EXPECT.destination), `destination ${c[5]}`);
			assert.ok(Number(c[6]) >= 1, `attempts ${c[6]}`);
			assert.match(c[7], /^(now|in \d+[dhms])/);
			assert.notEqual(c[8], '', 'the last error of a down primary is shown');
		}
		const stats = node.byId('mxspool-stats');
		assert.equal(cell(stats, 'Queued messages'), String(EXPECT.ids.length));
		assert.equal(cell(stats, 'Accepted'), String(EXPECT.ids.length));
		assert.ok(cell(stats, 'Destinations unreachable').includes(EXPECT.destination));
		assert.deepEqual(rec.missing, [], 'fields the view reads that the real JSON lacks');
		assert.equal(rec.polls.length, 1);
		assert.ok(!node.byId('mxspool-down'));
	});

	test('the status overview says what is queued and that the primary is unreachable', async () => {
		const { node, rec } = await page('view/status/include/70_mxspool');
		const v = luci.load('view/status/include/70_mxspool');
		const out = v.render(await v.load());
		assert.equal(cell(out, 'Queued messages'), String(EXPECT.ids.length));
		assert.match(cell(out, 'Oldest message'), /^\d+[dhms]/);
		assert.match(cell(out, 'Primary'), /^unreachable: /);
		assert.ok(cell(out, 'Primary').includes(EXPECT.destination));
		assert.deepEqual(rec.missing.concat(luci.env.recorded.missing), []);
		void node;
	});

	test('the DNS check page shows the real findings, problems and advice apart', async () => {
		const { node, rec } = await page('view/mxspool/dnscheck');
		const sections = node.findAll(n => n.attrs['class'] === 'cbi-section');
		assert.equal(sections.length, EXPECT.domains.length);
		for (const s of sections) {
			const domain = s.children[0].textContent;
			await s.find(n => n.tag === 'button').click();
			await drive.settle();
			const want = EXPECT.dnscheck[domain];
			const codes = cls => s.findAll(n => n.attrs['class'] === 'alert-message ' + cls)
				.flatMap(box => box.findAll(n => n.tag === 'li').map(li => li.attrs['data-code']));
			assert.deepEqual(codes('error'), want.problems, `${domain} problems`);
			assert.deepEqual(codes('notice'), want.advice, `${domain} advice`);
			assert.ok(s.textContent.includes(EXPECT.hostname + ' (this router)'), `${domain}: our MX row`);
		}
		assert.deepEqual(rec.missing, []);
		assert.deepEqual(rec.execs.map(e => e.line).sort(), EXPECT.domains.map(d => `/usr/sbin/mxspool dnscheck ${d} --json -c /etc/config/mxspool`).sort());
	});

	test('the log page shows the daemon log lines', async () => {
		const { node } = await page('view/mxspool/log');
		const box = node.byId('mxspool-log');
		assert.ok(box, 'a log box');
		assert.ok(box.textContent.includes(`id=${EXPECT.ids[0]} event=accept`));
	});

	test('flush, retag, delete and return act on the real daemon after a confirmation', async () => {
		const { node, rec } = await page('view/mxspool/queue');
		await node.button('Retry all now').click();
		await drive.confirmModal();
		assert.match(notes(rec).pop(), /message\(s\) scheduled for immediate delivery/);

		node.byId('mxspool-domain').value = EXPECT.domains[0];
		await node.button('Retry this domain now').click();
		await drive.confirmModal();
		assert.match(notes(rec).pop(), /message\(s\) scheduled for immediate delivery/);

		node.byId('mxspool-domain').value = EXPECT.domains[0];
		node.byId('mxspool-retag').value = EXPECT.retag_to;
		await node.button("Send this domain's mail there").click();
		await drive.confirmModal();
		assert.match(notes(rec).pop(), new RegExp(`message\\(s\\) of ${EXPECT.domains[0].replace(/\./g, '\\.')} now go to`));

		const [first, second] = EXPECT.ids;
		const row = id => rows(node).find(r => r.attrs['data-id'] === id);
		await row(first).find(n => n.tag === 'button' && n.textContent === 'Delete').click();
		await drive.confirmModal();
		assert.equal(notes(rec).pop().trim(), `${first}: deleted`);
		assert.ok(!row(first), 'the deleted message is gone after the refresh');

		await row(second).find(n => n.tag === 'button' && n.textContent === 'Return').click();
		await drive.confirmModal();
		assert.match(notes(rec).pop(), new RegExp(`^${second}: returned to <`));
		assert.ok(!row(second), 'the returned message is gone after the refresh');
		assert.deepEqual(rec.missing, []);
	});
}

if (PHASE === 'down') {
	test('with the daemon stopped, the queue page says so and changes nothing', async () => {
		const { node, rec } = await page('view/mxspool/queue');
		const down = node.byId('mxspool-down');
		assert.ok(down, 'the not-running notice');
		assert.match(down.textContent, /mxspool is not running/);
		assert.ok(down.textContent.includes('no control socket'), down.textContent);
		assert.ok(!node.byId('mxspool-queue'));
		await node.button('Retry all now').click();
		await drive.confirmModal();
		assert.match(notes(rec).pop(), /not running: nothing was changed/);
	});

	test('with the daemon stopped, the status overview says so', async () => {
		luci.reset();
		luci.env.execHandler = live;
		const v = luci.load('view/status/include/70_mxspool');
		const out = v.render(await v.load());
		assert.match(out.textContent, /mxspool is not running/);
	});
}
