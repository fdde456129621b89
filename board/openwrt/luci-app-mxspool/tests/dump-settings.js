'use strict';
/*
 * Prints, as JSON, what the Settings page would write: per section type,
 * each option's name, kind, example (placeholder, a Flag's 1/0, a
 * ListValue's choices) and the page's verdict (true: it would save it) on
 * each value of SAMPLES plus the example. tests/integration/
 * test_openwrt_ui.py writes those into UCI files and asks `mxspool check`
 * whether it agrees.
 * usage: node dump-settings.js
 */

const drive = require('./drive.js');

const B64 = 'sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=';
const SAMPLES = [
	'no such value!', '0', '1', '15', '65536', '15m', '0s', '90s', '31s', '4294967295s', '4294967296s',
	'10M', '10X', '64K', '32K', '2G', '-1', 'example.com', 'localhost', 'under_score.com', 'xn--bcher-kva.example',
	'127.0.0.1', '127.0.0.1:25', '127.0.0.1:0', '[::1]:25', '::1', 'host:99999', '192.0.2.0/24',
	'192.0.2.0/33', '/abs/path', 'rel/path', 'a b', '5.0', '5.123', '-1.25', B64, 'sha256:AAAA',
	'alice', 'alice@example.com', 'alice@other.example', '.example.com', '1h 1d', '1d 1h', '0s 1h', 'mx', 'MX'
];

(async () => {
	const form = await drive.settingsForm();
	const out = {};
	for (const [type, s] of Object.entries(form.sections)) {
		s.setForm('x', { user: ['alice'], tls_cert: '/etc/mxspool/cert.pem', name: 'example.com' });
		out[type] = s.options.map(o => {
			const entry = { name: o.option, kind: o.kind, tab: o.tab };
			if (o.kind === 'Flag')
				entry.choices = ['1', '0'];
			else if (o.kind === 'ListValue')
				entry.choices = o.values.map(v => v[0]);
			else {
				entry.example = o.placeholder;
				entry.verdicts = {};
				for (const v of SAMPLES.concat([o.placeholder]))
					entry.verdicts[v] = o.check('x', v) === true;
			}
			return entry;
		});
	}
	process.stdout.write(JSON.stringify(out, null, 1) + '\n');
})().catch(e => {
	console.error(e);
	process.exit(1);
});
