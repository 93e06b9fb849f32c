// Types of dist/console/vendor/uPlot.esm.js (copied there from node_modules/uplot by the build):
// a page imports it as '../vendor/uPlot.esm.js' and gets uPlot's own types.
import uPlot from 'uplot';
export default uPlot;
